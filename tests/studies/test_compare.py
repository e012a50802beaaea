"""The Muon vs AdamW study: its maths against hand-computed values, its spec's validation, and one
real tiny study through the CLI (killed part-way, resumed, then re-run as a no-op)."""

from __future__ import annotations

import json
import math
import subprocess
import tomllib
from types import SimpleNamespace

import pytest
import ray
from matplotlib.image import imread

import telescope.cli
from tests.sweep_helpers import ROOT, kill_after, raw_trials, telescope_cmd
from telescope.errors import ConfigError
from telescope.read.report import compare_section
from telescope.store.ledger import Ledger
from telescope.studies.compare.analysis import (
    auto_target, crossing, mean_curve, pareto_front, ratio_range, ratio_trend, time_to_target, token_ratio,
    weakly_dominated,
)
from telescope.studies.compare.figures import FIGURES
from telescope.studies.compare.results import RESULT_FILE, format_table, load_compare
from telescope.studies.compare.spec import load_compare_spec, parse_compare_spec

# ---------------------------------------------------------------------------- the maths


def test_time_to_target_interpolates_in_log_tokens():
    tokens, losses = [100, 1000, 10000], [3.0, 2.0, 1.5]
    # halfway in loss between 100 and 1000 tokens is their geometric mean, sqrt(1e5)
    assert time_to_target(tokens, losses, 2.5) == pytest.approx(316.227766, rel=1e-9)
    assert time_to_target(tokens, losses, 1.75) == pytest.approx(3162.27766, rel=1e-9)
    assert time_to_target(tokens, losses, 2.0) == pytest.approx(1000.0)  # exactly on a point
    assert time_to_target(tokens, losses, 1.0) is None  # never reached
    # already at the target at the first evaluation: that evaluation's tokens, flagged as censored
    assert time_to_target(tokens, losses, 3.0) == 100.0
    assert crossing(tokens, losses, 3.0) == (None, 0)  # censored: no evaluation before it
    assert crossing(tokens, losses, 2.5) == (0, 1) and crossing(tokens, losses, 1.0) is None


def test_time_to_target_is_the_first_crossing_and_skips_non_finite_losses():
    # dips below 2.5, climbs back, falls again: the first crossing counts
    # (3.0 - 2.5) / (3.0 - 2.4) = 5/6 of the way from 100 to 200 in log-tokens: 100 * 2^(5/6)
    assert time_to_target([100, 200, 400, 800], [3.0, 2.4, 2.6, 2.0], 2.5) == pytest.approx(178.1797, rel=1e-6)
    # a NaN evaluation is skipped: interpolate from 100 to 400, halfway in loss -> 200
    assert time_to_target([100, 200, 400], [3.0, math.nan, 2.0], 2.5) == pytest.approx(200.0)
    assert crossing([100, 200, 400], [math.nan, 2.0, 1.0], 2.5) == (None, 1)


def test_time_to_target_rejects_malformed_curves():
    with pytest.raises(ConfigError, match="curve"):
        time_to_target([100, 200], [3.0], 2.5)
    with pytest.raises(ConfigError, match="increasing"):
        time_to_target([200, 100], [3.0, 2.0], 2.5)


def test_token_ratio_auto_target_and_trend():
    assert token_ratio(110.0, 100.0) == pytest.approx(1.1)
    assert token_ratio(None, 100.0) is None and token_ratio(110.0, None) is None
    assert auto_target([3.1, 2.9, math.inf]) == 3.1  # the worst best run's lowest loss
    with pytest.raises(ConfigError, match="target_loss"):
        auto_target([math.inf])
    assert ratio_trend([4, 8, 16], [1.0, 1.1, 1.2]) == pytest.approx(0.1)  # +0.1 per doubling
    assert ratio_trend([4, 16], [1.3, 1.1]) == pytest.approx(-0.1)  # two doublings, -0.2
    assert ratio_trend([8], [1.2]) is None


def test_ratio_range_from_the_bracketing_evaluations():
    # AdamW crossed between 100 and 200 tokens, Muon between 50 and 100: R in [100/100, 200/50]
    assert ratio_range([100, 200], [50, 100]) == [1.0, 4.0]
    assert ratio_range([100, 200], [None, 50]) == [2.0, None]  # Muon censored: no upper bound
    assert ratio_range([None, 200], [50, 100]) == [None, 4.0]  # AdamW censored: no lower bound
    assert ratio_range(None, [50, 100]) is None


def test_pareto_front_and_dominance():
    points = [(10, 100), (5, 200), (20, 90), (8, 300), (20, 100)]
    # (8, 300) loses to (5, 200); (20, 100) to (10, 100) and (20, 90); the rest trade off
    assert pareto_front(points) == [1, 0, 2]
    assert pareto_front([(1, 1), (1, 1)]) == [0, 1]  # equal points do not beat each other
    assert weakly_dominated((10, 100), [(10, 100)]) and weakly_dominated((12, 150), [(5, 200), (10, 100)])
    assert not weakly_dominated((4, 500), [(5, 200), (10, 100)])


def test_mean_curve_averages_seeds_at_common_steps():
    steps, losses = mean_curve([([5, 10, 15], [3.0, 2.0, 1.0]), ([5, 10], [2.0, 1.0])])
    assert steps == [5, 10] and losses == pytest.approx([2.5, 1.5])


# ---------------------------------------------------------------------------- the spec

TINY = """\
kind = "compare"
name = "tiny"
width = 16
seeds = 1
batch_sizes = [4, 8]
tokens = 6144
target_loss = "auto"
evals = 8
eval_windows = 16

[model]
depth = 1
head_dim = 8

[training]
data = "builtin:stdlib"
seq_len = 32
device = "cpu"

[lr.muon]
low = 0.01
high = 0.03
points = 2

[lr.adamw]
low = 0.003
high = 0.01
points = 2

[resources]
num_cpus = 1
"""
N_TRIALS = 2 * 2 * 2  # optimizers x batch sizes x lrs

def compare_cmd(*args: str) -> list[str]:
    return telescope_cmd("compare", *args)


def run_compare_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(compare_cmd(*args), capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture
def compare_main(capsys):
    """`telescope compare ARGS` in this process: (exit code, stdout, stderr)."""

    def call(*args: str) -> tuple[int, str, str]:
        code = telescope.cli.main(["compare", *args])
        return code, *capsys.readouterr()

    return call


def test_the_shipped_spec_is_valid():
    spec = load_compare_spec(ROOT / "sweeps" / "compare.toml")
    assert spec.batch_sizes == (4, 8, 16, 32)
    assert [spec.steps(b) * b * spec.seq_len for b in spec.batch_sizes] == [spec.tokens] * 4
    # the same validation windows at every batch size
    assert {spec.trial_config("muon", b, 0.01, 0).eval_batches * b for b in spec.batch_sizes} == {spec.eval_windows}


def test_a_study_is_what_its_trials_share():
    spec = parse_compare_spec(tomllib.loads(TINY))
    grown = tomllib.loads(TINY)
    grown["lr"]["muon"]["points"] = 3  # 0.01, 0.0173, 0.03: keeps both old points
    grown.update(batch_sizes=[4, 8, 16], seeds=2, target_loss=3.0, name="grown")
    wider = parse_compare_spec(grown)
    assert wider.fingerprint() == spec.fingerprint()  # the same directory takes it...
    assert {t.trial_id for t in spec.trials()} < {t.trial_id for t in wider.trials()}  # ...and reuses its trials
    assert len(wider.trials()) == (3 + 2) * 3 * 2
    other = parse_compare_spec(tomllib.loads(TINY.replace("tokens = 6144", "tokens = 8192")))
    assert other.fingerprint() != spec.fingerprint()


@pytest.mark.parametrize("change, field", [
    (("kind = \"compare\"\n", ""), "kind"),
    (("tokens = 6144", "tokens = 6000"), "tokens"),
    (("batch_sizes = [4, 8]", "batch_sizes = [4, 4]"), "batch_sizes"),
    (("target_loss = \"auto\"", "target_loss = -1"), "target_loss"),
    (("eval_windows = 16", "eval_windows = 12"), "eval_windows"),
    (("[lr.muon]\nlow = 0.01", "[lr.muon]\nlow = 0.05"), "lr.muon.low"),
    (("[lr.adamw]\nlow = 0.003\nhigh = 0.01\npoints = 2\n", ""), "lr.adamw"),
    (("device = \"cpu\"", "device = \"cpu\"\nbatch_size = 8"), "training.batch_size"),
    (("seeds = 1", "seeds = 1\nwidht = 32"), "widht"),
    (("width = 16", "width = 20"), "width"),
])
def test_bad_spec_fields_are_one_line_errors(tmp_path, compare_main, change, field):
    spec = tmp_path / "bad.toml"
    assert change[0] in TINY
    spec.write_text(TINY.replace(*change))
    out = tmp_path / "out"
    code, _, err = compare_main(str(spec), "--out", str(out), "--quiet")
    assert code == 2
    assert err.startswith(f"telescope: error: {field}: ") and err.count("\n") == 1, err
    assert not out.exists()  # refused before anything is written


# ---------------------------------------------------------------------------- a real study


def test_tiny_study_end_to_end_resumes_and_reruns_as_a_no_op(tmp_path, compare_main):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    out = tmp_path / "study"
    args = [str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"]

    kill_after(compare_cmd(*args), out, after_parts=2)
    killed_at = set(raw_trials(out)["trial_id"])
    assert 2 <= len(killed_at) < N_TRIALS

    done = run_compare_cli(*args)
    assert done.returncode == 0, done.stderr
    rows = raw_trials(out)
    assert len(rows) == rows["trial_id"].nunique() == N_TRIALS  # nothing run twice
    assert killed_at <= set(rows["trial_id"])
    assert set(rows["status"]) == {"completed"}
    assert sorted(set(zip(rows["optimizer"], rows["batch_size"]))) == [
        ("adamw", 4), ("adamw", 8), ("muon", 4), ("muon", 8)]

    table = json.loads((out / RESULT_FILE).read_text())
    assert [r["batch_size"] for r in table["ratios"]] == [4, 8]
    for r in table["ratios"]:
        assert r["ratio"] is not None and math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["ratio"] == pytest.approx(r["tokens_adamw"] / r["tokens_muon"])
        lo, hi = r["ratio_range"]
        assert (lo is None or lo <= r["ratio"]) and (hi is None or r["ratio"] <= hi)
    assert f"{table['ratios'][0]['ratio']:.3f}" in done.stdout  # the printed table is this one

    # the numbers follow from the ledger: best lr by final validation loss, T read off its curve
    ledger = Ledger(out)
    trials, curves = ledger.trials(), ledger.curves()
    for cell in table["cells"]:
        mine = trials[(trials["optimizer"] == cell["optimizer"]) & (trials["batch_size"] == cell["batch_size"])]
        best = mine.loc[mine["final_loss"].idxmin()]
        assert cell["best_lr"] == pytest.approx(best["lr"])
        val = curves[(curves["trial_id"] == best["trial_id"]) & curves["val_loss"].notna()]
        tokens = (val["step"] * cell["batch_size"] * table["seq_len"]).tolist()
        assert cell["tokens_to_target"] == pytest.approx(
            time_to_target(tokens, val["val_loss"].tolist(), table["target_loss"]))
        steps_in_tokens = cell["steps_to_target"] * cell["batch_size"] * table["seq_len"]
        assert steps_in_tokens == pytest.approx(cell["tokens_to_target"])
        assert cell["tokens_to_target"] <= table["tokens_per_run"]
    # auto: the target is the lowest loss of the worst best run, so that run reaches it at its minimum
    assert table["target_loss"] == pytest.approx(max(min(c["curve"]["val_loss"]) for c in table["cells"]))

    result = load_compare(out)
    assert result.table == table
    # the sweep report's Muon-vs-AdamW section: the same table, its figures redrawn beside it
    figures: dict = {}
    section = compare_section(out, tmp_path / "report", SimpleNamespace(figures=figures))
    assert format_table(table) in section and set(figures) == {f"compare_{k}" for k in FIGURES}
    assert all(imread(path).shape[0] > 100 for path in figures.values())
    assert set(result.figures) == set(FIGURES)
    for path in result.figures.values():
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # From here on nothing may run: in this process, so that Ray staying down proves it.
    # The same command again: no ledger row is added, the same table comes back.
    parts = sorted(p.name for p in (out / "trials.parquet").iterdir())
    code, _, err = compare_main(*args)
    assert code == 0, err
    assert sorted(p.name for p in (out / "trials.parquet").iterdir()) == parts
    assert json.loads((out / RESULT_FILE).read_text())["ratios"] == table["ratios"]

    # another target reads the same trials again
    spec.write_text(TINY.replace('target_loss = "auto"', f"target_loss = {table['target_loss'] + 0.2}"))
    code, _, err = compare_main(*args, "--no-plot")
    assert code == 0, err
    retarget = json.loads((out / RESULT_FILE).read_text())
    assert retarget["target_loss"] == pytest.approx(table["target_loss"] + 0.2)
    assert (out / "spec.toml").read_text() == spec.read_text()  # the copy says what was analysed
    pairs = [(old["tokens_to_target"], new["tokens_to_target"]) for old, new in zip(table["cells"], retarget["cells"])]
    assert all(new <= old for old, new in pairs)  # a higher loss is reached no later...
    worst = max(range(len(pairs)), key=lambda i: min(table["cells"][i]["curve"]["val_loss"]))
    assert pairs[worst][1] < pairs[worst][0]  # ...and strictly sooner by the run that set the old target
    assert not any((out / f).exists() for f in FIGURES.values())  # no figure of the old target is left

    # fewer batch sizes: a subset of the recorded trials, read again
    spec.write_text(TINY.replace("batch_sizes = [4, 8]", "batch_sizes = [8]"))
    code, stdout, err = compare_main(*args, "--json")
    assert code == 0, err
    assert [r["batch_size"] for r in json.loads(stdout)["ratios"]] == [8]

    # other tokens per run make other trials: another study, refused in one line
    spec.write_text(TINY.replace("tokens = 6144", "tokens = 8192"))
    code, _, err = compare_main(*args)
    assert code == 2 and err.count("\n") == 1 and "another compare study" in err

    assert not ray.is_initialized()
    assert sorted(p.name for p in (out / "trials.parquet").iterdir()) == parts
