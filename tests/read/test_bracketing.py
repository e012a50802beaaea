"""Rings through the real ledger: replay and resume across a ring, and the `bracketed` flag in
status, export (its warnings) and the report's numbers.

The trials here are a Python loss landscape written through the real ledger (real Parquet, real
sweep directory, the real replay): the rule cannot tell them from trained models, and a landscape
is the only way to put the optimum exactly where a ring must follow it. A real-Ray sweep that
grows a ring is in tests/run/test_sweep.py.
"""

import json
import math

import pytest

from telescope.core.contract import TrialResult
from telescope.read.export import export
from telescope.read.report.numbers import level_summaries, point_losses
from telescope.read.status import format_status, sweep_status
from telescope.spec.sweep import load_spec
from telescope.state import ledger_rows, point_id, replay, sweep_state
from telescope.store.directory import open_sweep_dir
from telescope.store.ledger import Ledger
from telescope.store.records import trial_record
from tests.sweep_helpers import run_cli, write_spec

PAPERS_RULE = 'max_shifts = 0\ncentre = "previous"'


def drift_loss(point, width):
    """The optimum's lr drifts up with width far faster than the tiny spec's 3x3 grids follow."""
    a = math.log(point["lr"]) - (math.log(0.1) - 20 / width)
    b = math.log(point["init_std"] / 0.02)
    return 2.0 + a * a + b * b


def record(ledger, trials, landscape=drift_loss):
    records = []
    for t in trials:
        loss = landscape(t.point, t.config.width)
        result = TrialResult(status="completed", final_loss=loss, final_train_loss=loss, tokens=1, flops=1.0,
                             wall_time_s=0.0, device="cpu", steps_done=1, n_params=1)
        records.append(trial_record(t.trial_id, result, axes=t.point, columns={
            "level": t.level, "width": t.config.width, "seed": t.seed, "point_id": point_id(t.level, t.point)}))
    ledger.append(records)


def drive(out, spec_path, *, budget=None, landscape=drift_loss):
    """What the controller does, with the landscape as the trainable: replay, record what the
    pending step misses, repeat; stop after `budget` trials (a kill)."""
    spec = load_spec(spec_path)
    ledger = open_sweep_dir(out, spec_path.read_text(), spec.fingerprint(), spec.name)
    done = 0
    while True:
        state = replay(spec, ledger_rows(ledger))
        if state.pending is None:
            return state
        missing = state.pending.missing
        if budget is not None:
            missing = missing[: budget - done]
            if not missing:
                return state
        record(ledger, missing, landscape)
        done += len(missing)


def test_replay_and_resume_across_a_ring(tmp_path):
    spec_path = write_spec(tmp_path, calibration_width=64)
    whole = drive(tmp_path / "whole", spec_path)
    assert whole.complete and all(lv.bracketed for lv in whole.levels)
    ringed = [lv for lv in whole.levels[1:] if lv.grid.widened]
    assert ringed, "the landscape's drift must make a later level grow a ring"
    level = ringed[0].level
    plain = 9  # the 3x3 grid before its ring
    before = sum(len(lv.grid.points()) for lv in whole.levels[:level])

    # killed in the middle of the ring: the replay stops at the ring step, asking only for its rest
    out = tmp_path / "killed"
    killed = drive(out, spec_path, budget=before + plain + 2)
    pending = killed.pending
    assert len(killed.levels) == level and pending.level == level
    assert pending.step.grid.widened == 1 and len(pending.recorded) == 2
    assert len(pending.recorded) + len(pending.missing) == len(pending.step.points)
    assert len(pending.step.points) == pending.step.grid.n_points - plain
    recorded_before = Ledger(out).trials().set_index("trial_id")

    resumed = drive(out, spec_path)  # resume: the same replay, finishing what is missing
    assert resumed.complete
    rows = Ledger(out).trials().set_index("trial_id")
    assert set(rows.index) == set(Ledger(tmp_path / "whole").trials()["trial_id"])
    assert len(rows) == sum(lv.grid.n_points for lv in resumed.levels)  # no point ran twice
    for tid in recorded_before.index:  # the killed run's rows stand as they were
        assert rows.loc[tid, "finished_at"] == recorded_before.loc[tid, "finished_at"]
    for a, b in zip(whole.levels, resumed.levels):
        assert a.grid == b.grid and dict(a.optimum.point) == dict(b.optimum.point)


def test_status_and_export_say_whether_each_optimum_is_bracketed(tmp_path):
    spec_path = write_spec(tmp_path, "paper.toml", calibration_width=64, rule=PAPERS_RULE)
    out = tmp_path / "paper"
    state = drive(out, spec_path)
    assert state.complete and not state.levels[-1].bracketed

    status = sweep_status(out)
    assert [lv["bracketed"] for lv in status["levels"]][1:] == [False, False]
    assert status["levels"][-1]["on_edge"] == {"lr": "high"}
    assert json.loads(json.dumps(status))["levels"][0]["bracketed"] in (True, False)
    assert "NOT bracketed: lr on the high edge" in format_status(status)

    doc = export(out)
    assert doc["complete"] and doc["provenance"]["bracketed"] is False
    assert [lv["bracketed"] for lv in doc["levels"]][1:] == [False, False]
    (warning,) = doc["warnings"]
    assert warning.startswith("lr = ") and "not bracketed" in warning and "level-2 grid (width 64)" in warning
    assert 'a larger max_shifts (now 0) or centre = "drift"' in warning and "axes.lr.high" not in warning

    # the CLI says it on stderr, one line, and keeps stdout the document
    result = run_cli("export", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"warning: {warning}"]
    assert json.loads(result.stdout)["warnings"] == [warning]

    summaries = level_summaries(*_report_inputs(out))
    assert [s.bracketed for s in summaries][1:] == [False, False]


def test_the_default_rule_brackets_and_exports_without_warnings(tmp_path):
    spec_path = write_spec(tmp_path, calibration_width=64)
    out = tmp_path / "new"
    state = drive(out, spec_path)
    assert all(lv.bracketed for lv in state.levels)
    status = sweep_status(out)
    assert all(lv["bracketed"] is True for lv in status["levels"])
    assert all(lv["rings"] >= 0 for lv in status["levels"]) and any(lv["rings"] for lv in status["levels"][1:])
    text = format_status(status)
    assert "NOT bracketed" not in text and text.count("bracketed") == 3
    doc = export(out)
    assert "warnings" not in doc and doc["provenance"]["bracketed"] is True
    summaries = level_summaries(*_report_inputs(out))
    assert [s.bracketed for s in summaries] == [True, True, True]


def sqrt_width_loss(point, width):
    """lr's optimum grows as sqrt(width), as Muon's does under the paper's lr/m: it never levels off."""
    a = math.log(point["lr"]) - math.log(0.0015 * width**0.5)
    return 2.0 + a * a + math.log(point["init_std"] / 0.02) ** 2


def test_an_optimum_that_drifts_is_exported_where_the_drift_heads_and_says_so(tmp_path):
    spec_path = write_spec(tmp_path, calibration_width=128)  # widths 16 .. 128: four levels
    out = tmp_path / "drifting"
    state = drive(out, spec_path, landscape=sqrt_width_loss)
    assert state.complete and all(lv.bracketed for lv in state.levels)
    calibration = dict(state.levels[-1].optimum.point)
    truth = 0.0015 * 1024**0.5
    doc = export(out, width=1024, extrapolate=True)
    lr = doc["extrapolated"]["lr"]
    assert lr["law"] == "x*(n) = c * n^alpha" and lr["x_inf"] is None and lr["alpha_significant"] is True
    assert lr["chi2"] < lr["rival_chi2"] and lr["alpha"] == pytest.approx(0.5, abs=0.05)
    # the export follows the measured drift: lr is the prediction, near the truth; init_std does not
    # drift, so it stays the calibration optimum
    assert doc["hyperparameters"]["lr"] == lr["value"] != calibration["lr"]
    assert abs(math.log(lr["value"] / truth)) < abs(math.log(calibration["lr"] / truth)) / 4
    assert doc["hyperparameters"]["init_std"] == calibration["init_std"]
    assert doc["extrapolated"]["init_std"]["source"] == "calibration optimum"
    followed = doc["drift_followed"]
    assert set(followed) == {"lr"} and followed["lr"]["calibration"] == calibration["lr"]
    assert followed["lr"]["law"] == lr["law"] and followed["lr"]["calibration_width"] == 128
    assert doc["at_width"]["lr"]["embedding"] == pytest.approx(lr["value"])  # muP's groups are built on it
    (warning,) = doc["warnings"]
    assert warning.startswith(f"lr = {lr['value']:.4g} follows the drift the levels measure")
    assert "(x*(n) = c * n^alpha" in warning and "at width 1024, an extrapolation" in warning
    assert f"`--at-calibration` exports {calibration['lr']:.4g} unchanged" in warning

    # --at-calibration keeps the calibration optimum and still says where the drift heads
    kept = export(out, width=1024, follow_drift=False)
    assert kept["hyperparameters"] == calibration and "drift_followed" not in kept
    (kept_warning,) = kept["warnings"]
    assert kept_warning.startswith(f"lr = {calibration['lr']:.4g} is the optimum at width 128, but it drifts")
    # the calibration width itself needs no prediction: nothing followed, no drift warning
    at_cal = export(out, width=128)
    assert "warnings" not in at_cal and at_cal["hyperparameters"] == calibration
    result = run_cli("export", str(out), "--width", "1024")
    assert result.returncode == 0 and result.stderr.strip().splitlines() == [f"warning: {warning}"]
    assert json.loads(result.stdout)["hyperparameters"]["lr"] == pytest.approx(lr["value"])
    result = run_cli("export", str(out), "--width", "1024", "--at-calibration")
    assert result.returncode == 0 and result.stderr.strip().splitlines() == [f"warning: {kept_warning}"]
    assert json.loads(result.stdout)["hyperparameters"]["lr"] == pytest.approx(calibration["lr"])


def test_an_unfinished_level_has_no_bracketed_verdict_yet(tmp_path):
    spec_path = write_spec(tmp_path, calibration_width=64)
    out = tmp_path / "partial"
    drive(out, spec_path, budget=12)
    status = sweep_status(out)
    assert status["levels"][0]["state"] == "done" and isinstance(status["levels"][0]["bracketed"], bool)
    assert [lv["bracketed"] for lv in status["levels"][1:]] == [None, None]


def _report_inputs(out):
    spec, ledger, state = sweep_state(out)
    trials = ledger.trials()
    return spec, state, trials, point_losses(trials, spec.axis_names)




def test_a_directory_recorded_before_the_new_settings_replays_under_its_own_rule(tmp_path):
    # A spec copy that names neither max_shifts nor centre, in a directory whose sweep.json holds
    # the fingerprint the earlier code gave it (the paper's rule, Newton-Schulz in bf16): status and
    # export replay that rule.
    text = write_spec(tmp_path, calibration_width=64).read_text()
    old = tmp_path / "old.toml"
    old.write_text(text.replace('device = "cpu"', 'device = "cpu"\nhidden_lr_rule = "adam-mup"'))
    legacy = write_spec(tmp_path, "legacy.toml", calibration_width=64, rule=PAPERS_RULE)
    legacy.write_text(old.read_text().replace("max_widenings = 1\n", f"max_widenings = 1\n{PAPERS_RULE}\n")
                      .replace('device = "cpu"', 'device = "cpu"\nns_dtype = "bf16"'))
    spec = load_spec(legacy)
    out = tmp_path / "old"
    ledger = open_sweep_dir(out, old.read_text(), spec.fingerprint(), spec.name)
    while (state := replay(spec, ledger_rows(ledger))).pending is not None:
        record(ledger, state.pending.missing)
    status = sweep_status(out)
    assert status["complete"] and [lv["bracketed"] for lv in status["levels"]][1:] == [False, False]
    assert export(out)["warnings"]
