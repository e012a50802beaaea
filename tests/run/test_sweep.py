"""Real telescoping sweeps on a real local Ray: run, re-run, kill and resume, lock, export."""

from __future__ import annotations

import json
import math
import signal
import subprocess

import numpy as np
import pandas as pd
import pytest

from tests.sweep_helpers import (
    kill_after, only_lr_axis, raw_trials, rows_at_level, run_cli, running, stop_with, telescope_cmd, terminal_cmd, tree_digest,
    wait_until, write_spec,
)
from telescope.run.controller import run_sweep, resume_sweep
from telescope.state import sweep_state
from telescope.read.export import export
from telescope.store.ledger import Ledger
from telescope.run.progress import Progress
from telescope.spec.sweep import load_spec

@pytest.fixture(scope="module")
def reference(cli_sweep):
    """The session's uninterrupted 3-level sweep (16 -> 32 -> 64) by `telescope run` under the
    paper's rule (no rings after level 0, each grid centred on the last optimum; see
    tests/conftest.py), the yardstick for resume. Rings and drift centring have their own tests
    (tests/core/test_rings.py, tests/run/test_rings.py)."""
    return cli_sweep.spec, cli_sweep.out, cli_sweep


def test_sweep_runs_every_level_and_records_every_trial(reference):
    spec_path, out, result = reference
    spec = load_spec(spec_path)
    assert "sweep complete" in result.stdout
    assert "level 2" in result.stderr  # the progress display showed every level
    trials = Ledger(out).trials()
    raw = raw_trials(out)
    assert len(raw) == len(trials) == trials["trial_id"].nunique()  # exactly one row per trial
    assert sorted(trials["level"].unique()) == [0, 1, 2]
    assert dict(trials.groupby("level")["width"].first()) == {0: 16, 1: 32, 2: 64}
    for column in ("trial_id", "level", "width", "seed", "status", "final_loss", "lr", "init_std",
                   "tokens", "flops", "wall_time_s", "node", "device"):
        assert column in trials.columns, column
    done = trials[trials["status"] == "completed"]
    assert len(done) > 0 and done["final_loss"].map(math.isfinite).all()
    assert (done["tokens"] == 10 * 8 * 32).all() and (done["device"] == "cpu").all()
    assert (trials["node"] != "").all()
    # the curves of every trial, train loss every step and validation loss where measured
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    one = curves[curves["trial_id"] == done["trial_id"].iloc[0]]
    assert one["train_loss"].notna().sum() == 10 and one["val_loss"].notna().sum() >= 2
    # the spec is kept beside the ledger; levels 1 and 2 are 3x3 grids centred on the last optimum
    assert (out / "spec.toml").read_text() == spec_path.read_text()
    _, _, state = sweep_state(out)
    assert state.complete and len(state.levels) == spec.n_levels == 3
    for prev, level in zip(state.levels, state.levels[1:]):
        assert level.grid.shape == "3x3"
        for name in ("lr", "init_std"):
            assert level.grid.centre(name) == pytest.approx(math.log(prev.optimum.point[name]))
            assert level.grid.spacing(name) == pytest.approx(prev.grid.spacing(name) / 2)


def test_rerunning_a_finished_sweep_is_a_no_op(reference, tmp_path):
    spec_path, out, _ = reference
    before = tree_digest(out / "trials.parquet")
    state = run_sweep(spec_path, out, num_cpus=2, progress=Progress(quiet=True))
    assert state.complete
    assert tree_digest(out / "trials.parquet") == before


def assert_an_unfinished_sweep_exports_what_it_has(out):
    _, _, partial = sweep_state(out)
    if partial.levels:
        doc = export(out)
        assert doc["complete"] is False and "unfinished sweep" in doc["warning"]
        assert doc["provenance"]["width"] == partial.levels[-1].width
    else:
        refused = run_cli("export", str(out))
        assert refused.returncode == 2 and "nothing to export" in refused.stderr


def test_killed_again_and_again_then_resumed_finishes_with_the_same_result(reference, tmp_path):
    """One sweep stopped three times, each time continued by `resume`: SIGKILL to the controller
    early in level 0 (the `run`) and in level 0's widening; then Ctrl-C, SIGINT
    to the whole process group as a terminal sends it, during level 1, which exits 130 in seconds
    with one line, running trials cancelled, the lock released. After each stop nothing recorded
    is lost and the unfinished sweep exports what it has, marked as such; the last `resume`
    finishes with the uninterrupted run's result, no finished trial run again."""
    ref_spec, ref_out, _ = reference
    spec = tmp_path / "tiny.toml"
    spec.write_text(ref_spec.read_text())
    out = tmp_path / "out"
    stopped_at = []  # the rows recorded at each stop
    command = ("run", str(spec), "--out", str(out))
    for after_parts in (1, 11):
        kill_after(telescope_cmd(*command, "--num-cpus", "2", "--quiet"), out, after_parts)
        before = raw_trials(out)
        assert len(before) >= after_parts and before["trial_id"].is_unique
        assert_an_unfinished_sweep_exports_what_it_has(out)
        stopped_at.append(before)
        command = ("resume", str(out))

    with running(terminal_cmd(*command, "--num-cpus", "2", "--quiet")) as proc:
        wait_until(proc, lambda: rows_at_level(out, 1) >= 2, "2 trials recorded at level 1")
        stderr, took = stop_with(proc, signal.SIGINT, group=True)
    assert took < 15, f"took {took:.1f} s to stop"
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == f"telescope: interrupted; continue with: telescope resume {out}"
    assert "Traceback" not in stderr
    before = raw_trials(out)
    assert len(before) >= len(stopped_at[-1]) + 2 and before["trial_id"].is_unique
    assert_an_unfinished_sweep_exports_what_it_has(out)
    stopped_at.append(before)

    result = run_cli("resume", str(out), "--num-cpus", "2")
    assert result.returncode == 0, result.stderr
    after = raw_trials(out)
    # nothing that finished before a stop ran again: its row is untouched and still the only one
    assert after["trial_id"].is_unique
    for before in stopped_at:
        kept = after.set_index("trial_id").loc[before["trial_id"], "finished_at"]
        assert kept.tolist() == before["finished_at"].tolist()
    reference_trials = Ledger(ref_out).trials().set_index("trial_id")
    assert set(after["trial_id"]) == set(reference_trials.index)
    np.testing.assert_array_equal(
        after.set_index("trial_id").loc[reference_trials.index, "final_loss"].values,
        reference_trials["final_loss"].values,
    )
    assert export(out, extrapolate=True) | {"complete": None} == export(ref_out, extrapolate=True) | {"complete": None}


def test_a_second_controller_on_the_same_directory_is_refused(tmp_path):
    spec = write_spec(tmp_path, steps=40)
    out = tmp_path / "out"
    with running(telescope_cmd("run", str(spec), "--out", str(out), "--num-cpus", "1", "--quiet"),
                 stderr=subprocess.DEVNULL) as first:
        wait_until(first, (out / "sweep.json").exists, "the first controller's sweep.json", timeout=120)
        second = run_cli("run", str(spec), "--out", str(out), timeout=60)
        assert second.returncode == 2
        assert "in use by another telescope controller" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        status = run_cli("status", str(out), "--json", timeout=60)
        assert json.loads(status.stdout)["controller"].startswith(f"pid {first.pid} ")


def test_optuna_level_spends_the_same_budget_inside_the_narrowed_box(tmp_path):
    spec = write_spec(tmp_path, sampler='["grid", "tpe"]')
    out = tmp_path / "out"
    state = run_sweep(spec, out, num_cpus=2, progress=Progress(quiet=True))
    assert state.complete
    trials = Ledger(out).trials()
    level1 = trials[trials["level"] == 1]
    assert len(level1) == 9 and level1["sampler_trial"].notna().all()
    assert sorted(level1["sampler_trial"].astype(int)) == list(range(9))
    box = state.levels[1].grid.box()
    for name, (lo, hi) in box.items():
        assert level1[name].between(lo * (1 - 1e-12), hi * (1 + 1e-12)).all()
    assert (out / "optuna.journal").stat().st_size > 0
    assert state.levels[1].optimum.method == "sample"
    # resuming a finished Optuna level asks for nothing more
    assert resume_sweep(out, num_cpus=2, progress=Progress(quiet=True)).complete
    assert len(Ledger(out).trials()) == len(trials)


def test_trials_past_their_time_limit_are_recorded_as_failed_and_the_sweep_stops_clearly(tmp_path):
    """Every trial hangs past its limit: each is cancelled and recorded as failed with the reason,
    the level runs to its end, and the sweep stops with one clear line; status still reads it.
    Three trials on two CPUs: the third starts only once a cancellation has freed a CPU."""
    spec = only_lr_axis(write_spec(tmp_path, steps=100000, resources="time_limit_s = 1.5"), points=3)
    out = tmp_path / "out"
    result = run_cli("run", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet")
    assert result.returncode == 3, result.stderr  # a stopped sweep, not bad input
    assert "every trial at level 0" in result.stderr and "Traceback" not in result.stderr
    assert "timed out" in result.stderr and "lower the learning-rate range" not in result.stderr
    trials = Ledger(out).trials()
    assert len(trials) == 3 and (trials["status"] == "failed").all()
    assert trials["error"].str.contains("timed out").all()
    assert (trials["wall_time_s"] < 10).all()
    status = json.loads(run_cli("status", str(out), "--json").stdout)
    assert not status["complete"] and "failed" in status["stopped"] and "timed out" in status["stopped"]


BAD_SPECS = {
    "missing field": ("base_width = 16\n", "", "base_width"),
    "unknown axis": ("[axes.init_std]", "[axes.momentum]", "momentum"),
    "low >= high": ("low = 0.003\nhigh = 0.03", "low = 0.03\nhigh = 0.003", "axes.lr"),
    "zero points": ("points = 3\n\n[axes.init_std]", "points = 0\n\n[axes.init_std]", "axes.lr.points"),
    "widths not doublings": ("calibration_width = 64", "calibration_width = 48", "calibration_width"),
    "fractional GPUs > 1": ("num_cpus = 1\n", "num_cpus = 1\nnum_gpus = 1.5\n", "resources.num_gpus"),
    "unknown sampler": ('sampler = "grid"', 'sampler = "annealing"', "sampler"),
    "TOML syntax": ("seeds = 1", "seeds = = 1", "tiny.toml"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_are_one_line_exit_2_and_leave_the_ledger_byte_identical(reference, tmp_path, case):
    ref_spec, ref_out, _ = reference
    old, new, field = BAD_SPECS[case]
    text = ref_spec.read_text()
    assert old in text
    bad = tmp_path / "tiny.toml"
    bad.write_text(text.replace(old, new, 1))
    before = tree_digest(ref_out)
    result = run_cli("run", str(bad), "--out", str(ref_out), timeout=60)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert field in result.stderr
    assert tree_digest(ref_out) == before


def test_bad_directories_are_refused_and_left_alone(reference, tmp_path):
    ref_spec, ref_out, _ = reference
    other = tmp_path / "other.toml"
    other.write_text(ref_spec.read_text().replace("steps = 10", "steps = 11"))
    before = tree_digest(ref_out)
    result = run_cli("run", str(other), "--out", str(ref_out), timeout=60)  # a ledger from another spec
    assert result.returncode == 2 and "another spec" in result.stderr
    assert tree_digest(ref_out) == before
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "todo.txt").write_text("mine")
    for args in (["resume", str(stranger)], ["status", str(stranger)], ["export", str(stranger)],
                 ["run", str(ref_spec), "--out", str(stranger)]):
        result = run_cli(*args, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in stranger.iterdir()) == ["todo.txt"]
