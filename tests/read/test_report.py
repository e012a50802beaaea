"""`telescope report`: figures and numbers from a real sweep and from synthetic ledgers whose truth
is known (an optimum drifting exactly as x_inf - alpha/n, a best loss exactly A n^-0.31 + E)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from telescope.cli import main
from telescope.core.contract import TrialResult
from telescope.state import sweep_state
from telescope.core.fits import DriftFit, PowerLawFit
from telescope.core.flops import optimizer_flops, training_flops
from telescope.store.directory import open_sweep_dir
from telescope.store.lock import SweepLock
from telescope.store.records import trial_record
from telescope.spec.plan import plan
from telescope.state import replay, row_loss
from telescope.read.report import make_report
from telescope.spec.sweep import load_spec

# ----------------------------------------------------------------------------- a synthetic sweep

SYNTHETIC_SPEC = """\
name = "synthetic"
base_width = 16
calibration_width = 128
target_width = 1024
seeds = 2
min_points = 3
max_widenings = 1

[model]
depth = 1
head_dim = 8

[training]
seq_len = 32
batch_size = 8
steps = 10

[axes.lr]
low = 0.001
high = 0.1
points = 5

[axes.init_std]
low = 0.005
high = 0.08
points = 5
"""
# Truth. Best loss A n^-P + E. Optimum, in ln space: u*(n) = U_INF - ALPHA/n, placed so each level's
# optimum sits a fixed fraction of its (halving) spacing off the centre, where the rule's
# quadratic refinement finds it exactly.
A, E, P = 3.0, 1.5, 0.31
SPACING = {"lr": math.log(100) / 4, "init_std": math.log(16) / 4}  # the base grids' spacings in ln
ALPHA = {"lr": 0.3 * 16 * SPACING["lr"], "init_std": -0.4 * 16 * SPACING["init_std"]}
U_16 = {"lr": math.log(0.01) + 0.2, "init_std": math.log(0.02) - 0.1}
U_INF = {name: U_16[name] + ALPHA[name] / 16 for name in U_16}
CURVATURE = 1e-3  # small, so the best grid point's loss is within ~1e-4 of the law
SEED_NOISE = 0.01  # +- by seed: cancels in the mean over two seeds


def synthetic_result(t) -> TrialResult:
    """Level 0: every (lr=0.1) point loses seed 1 to divergence, one corner fails outright."""
    n, cfg = t.config.width, t.config
    flops = training_flops(n, cfg.depth, cfg.seq_len, 256, cfg.batch_size, cfg.steps, cfg.mlp_ratio)
    ns = optimizer_flops(cfg.optimizer, n, cfg.depth, cfg.steps, cfg.mlp_ratio)  # Muon's, counted apart
    if t.level == 0 and t.point["lr"] == 0.1 and t.seed == 1:
        return TrialResult("diverged", math.nan, 9.0, 1280, flops / 2, 0.5, "cpu", 5, 1000, optimizer_flops=ns / 2,
                           error="loss blew up")
    if t.level == 0 and t.point == {"lr": 0.001, "init_std": 0.08} and t.seed == 0:
        return TrialResult("failed", math.nan, math.nan, 0, 0.0, 0.1, "cpu", 0, 0, error="worker lost")
    d2 = sum((math.log(t.point[k]) - (U_INF[k] - ALPHA[k] / n)) ** 2 for k in t.point)
    loss = A * n**-P + E + CURVATURE * d2 + (SEED_NOISE if t.seed == 0 else -SEED_NOISE)
    return TrialResult("completed", loss, loss, 2560, flops, 1.0, "cpu", 10, 1000, optimizer_flops=ns,
                       train_steps=[1, 10], train_loss=[5.0, loss], val_steps=[10], val_loss=[loss])


def build_synthetic(root: Path, *, stop_level: int | None = None, recorded: int = 0,
                    spec_text: str = SYNTHETIC_SPEC) -> Path:
    """A real sweep directory whose trials come from `synthetic_result`, recorded through the
    ledger's API in the order the rule asks for them; stops after `recorded` trials of
    `stop_level` if given."""
    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / "synthetic.toml"
    spec_path.write_text(spec_text)
    spec, out = load_spec(spec_path), root / "sweep"
    with SweepLock(out):
        ledger = open_sweep_dir(out, spec_text, spec.fingerprint(), spec.name)
        rows: dict = {}
        while (state := replay(spec, rows)).pending is not None:
            todo = state.pending.missing
            stop = state.pending.level == stop_level
            records = [trial_record(t.trial_id, synthetic_result(t), axes=t.point,
                                    columns={"level": t.level, "width": t.config.width, "seed": t.seed})
                       for t in (todo[:recorded] if stop else todo)]
            ledger.append(records)
            rows.update({r.trial_id: r.row for r in records})
            if stop:
                break
    return out


# ----------------------------------------------------------------------------- the real sweep


@pytest.fixture(scope="module")
def real_report(tmp_path_factory, real_sweep):
    sweep = real_sweep
    outdir = tmp_path_factory.mktemp("real-report")
    assert main(["report", str(sweep), "--out", str(outdir)]) == 0  # the CLI, coordinate check on
    return sweep, outdir


# ----------------------------------------------------------------------------- reading report.md


def md_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The markdown table whose header row starts with `first_header`, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def assert_figures_readable(outdir: Path, names: set[str]) -> None:
    text = (outdir / "report.md").read_text()
    embedded = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text))
    assert embedded == names, embedded ^ names
    for name in names:
        image = matplotlib.image.imread(outdir / name)
        assert image.shape[0] > 200 and image.shape[1] > 200, (name, image.shape)
        assert image[..., :3].std() > 0.05, f"{name} is blank"


def spent_flops(trials: pd.DataFrame) -> pd.Series:
    """Each row's FLOPs, model plus Muon's Newton-Schulz, from the raw columns."""
    return trials["flops"] + trials["optimizer_flops"].fillna(0.0)


def expected_levels(sweep: Path) -> pd.DataFrame:
    """Per level from the raw Parquet alone: trial counts, FLOPs (model + Newton-Schulz), and the
    best mean-over-seeds loss, where any diverged or failed seed makes the point infinitely bad."""
    trials = pd.read_parquet(sweep / "trials.parquet")
    trials["spent"] = spent_flops(trials)
    assert (trials["optimizer_flops"] > 0).any()  # Muon sweeps: the report must count both parts
    axes = [c for c in ("lr", "init_std") if c in trials.columns]
    trials["rank_loss"] = [row_loss(r) for r in trials.to_dict("records")]
    point = trials.groupby(["level", *axes])["rank_loss"].mean().groupby("level").min()
    per = trials.groupby("level").agg(width=("width", "first"), trials=("trial_id", "size"),
                                      flops=("spent", "sum"))
    per["completed"] = trials[trials["status"] == "completed"].groupby("level").size()
    per["diverged"] = trials[trials["status"] == "diverged"].groupby("level").size()
    per["failed"] = trials[trials["status"] == "failed"].groupby("level").size()
    per = per.fillna(0)
    per["cumulative"] = per["flops"].cumsum()
    per["best"] = point
    return per


def printed(cell: str) -> tuple[float, float]:
    """A number as the report prints it ("0.053 [0.046, 0.062]", "2.469"): its value, and half a
    unit of its last digit (what rounding to the digits its uncertainty allows may have moved)."""
    token = cell.split()[0]
    decimals = len(token.split(".")[1]) if "." in token else 0
    if "e" in token.lower():
        mantissa, exponent = token.lower().split("e")
        decimals = (len(mantissa.split(".")[1]) if "." in mantissa else 0) - int(exponent)
    return float(token), 0.5 * 10.0**-decimals


def assert_levels_match_ledger(sweep: Path, text: str) -> None:
    _, _, state = sweep_state(sweep)
    table = {int(r["level"]): r for r in md_table(text, "level")}
    expected = expected_levels(sweep)
    assert sorted(table) == list(expected.index)
    for level, row in expected.iterrows():
        shown = table[level]
        assert int(shown["width"]) == row["width"]
        for column in ("trials", "completed", "diverged", "failed"):
            assert int(shown[column]) == row[column], (level, column)
        assert float(shown["FLOPs"]) == pytest.approx(row["flops"], rel=1e-4)
        assert float(shown["cumulative FLOPs"]) == pytest.approx(row["cumulative"], rel=1e-4)
        if level < len(state.levels):
            best, half_unit = printed(shown["best loss"])
            assert best == pytest.approx(row["best"], abs=half_unit + 1e-12)
            for name, value in state.levels[level].optimum.point.items():
                shown_value, half_unit = printed(shown[f"optimum {name}"])
                assert shown_value == pytest.approx(value, abs=half_unit + 1e-12)


def assert_compute_matches_ledger(sweep: Path, text: str) -> None:
    spec, _, _ = sweep_state(sweep)
    p = plan(spec)
    spent = float(spent_flops(pd.read_parquet(sweep / "trials.parquet")).sum())
    quantities = {r["quantity"]: r["value"] for r in md_table(text, "quantity")}
    so_far = next(k for k in quantities if k.startswith("sweep FLOPs spent"))
    assert float(quantities[so_far]) == pytest.approx(spent, rel=1e-4)
    final = float(quantities[f"final run at width {spec.target_width} (planned)"])
    assert final == pytest.approx(p.final_run_flops, rel=1e-4)
    share = float(quantities["final run share of sweep + final"].rstrip("%")) / 100
    assert share == pytest.approx(p.final_run_flops / (spent + p.final_run_flops), abs=1e-4)
    brute = md_table(text, "brute force")
    assert len(brute) == len(p.brute_force) == 4
    for row, b in zip(brute, p.brute_force):
        assert (row["brute force"], int(row["width"])) == (b.grid_kind, b.width)
        assert float(row["FLOPs"]) == pytest.approx(b.flops, rel=1e-4)
        savings = float(next(v for k, v in row.items() if k.startswith("savings (spent")).rstrip("%")) / 100
        assert savings == pytest.approx(1 - spent / b.flops, abs=1e-4)
    assert "typically higher than 50%" in text and "20%-99%" in text


# ----------------------------------------------------------------------------- tests


def test_report_of_a_real_sweep_has_every_figure_and_the_ledgers_numbers(real_report):
    sweep, outdir = real_report
    names = {"transfer.png", "grid_level0.png", "grid_level1.png", "grid_level2.png", "drift.png",
             "loss_vs_width.png", "compute.png", "coordcheck.png"}
    assert_figures_readable(outdir, names)
    text = (outdir / "report.md").read_text()
    assert "status: complete" in text
    assert_levels_match_ledger(sweep, text)
    assert_compute_matches_ledger(sweep, text)
    # three widths: the three-parameter loss law passes exactly through them, and says so instead
    # of predicting; alpha is still quoted beside the paper's
    assert "L = A * width^(-alpha) + E through 3 widths" in text and "an exact interpolation, not a" in text
    assert "Predicted loss" not in text and "nan" not in text.lower() and "paper reports alpha = 0.31" in text
    drift = {r["axis"]: r for r in md_table(text, "axis")}
    assert set(drift) == {"lr", "init_std"} and all(r["from"].startswith("3 levels") for r in drift.values())


def test_fits_recover_the_known_drift_and_loss_law(tmp_path):
    sweep = build_synthetic(tmp_path)
    data = make_report(sweep, tmp_path / "report", coordcheck=False)
    assert data.complete and [s.state for s in data.levels] == ["done"] * 4
    for name in ALPHA:
        fit = data.drift[name]
        assert isinstance(fit, DriftFit) and fit.n_points == 4
        assert fit.alpha == pytest.approx(ALPHA[name], rel=1e-6)
        assert fit.x_inf == pytest.approx(U_INF[name], abs=1e-8)
    law = data.loss_fit
    assert isinstance(law, PowerLawFit)
    assert law.alpha == pytest.approx(P, abs=2e-3)
    assert law.E == pytest.approx(E, abs=2e-3) and law.A == pytest.approx(A, rel=2e-3)
    # the markdown carries the same fits, the real-space x_inf included
    text = data.markdown.read_text()
    drift = {r["axis"]: r for r in md_table(text, "axis")}
    for name in ALPHA:  # to the digits their uncertainty allows
        alpha, half_unit = printed(drift[name]["alpha"])
        assert alpha == pytest.approx(ALPHA[name], abs=half_unit)
        x_inf, half_unit = printed(drift[name]["x_inf"])
        assert x_inf == pytest.approx(math.exp(U_INF[name]), abs=half_unit)
    law_rows = {r["parameter"]: printed(r["value"]) for r in md_table(text, "parameter")}
    alpha, half_unit = law_rows["alpha"]
    assert alpha == pytest.approx(P, abs=max(half_unit, 2e-3))
    # a seed that diverged makes its point infinitely bad; failed and diverged cells are counted
    assert_levels_match_ledger(sweep, text)
    assert (data.levels[0].diverged, data.levels[0].failed) == (5, 1)
    assert_compute_matches_ledger(sweep, text)
    assert_figures_readable(data.outdir, {"transfer.png", "drift.png", "loss_vs_width.png", "compute.png",
                                          *(f"grid_level{i}.png" for i in range(4))})
    assert "coordinate check: skipped" in text


def test_an_unfinished_sweep_reports_what_exists(tmp_path):
    sweep = build_synthetic(tmp_path, stop_level=2, recorded=7)
    data = make_report(sweep, tmp_path / "report", axes=["init_std", "lr"], coordcheck=False)
    assert not data.complete
    assert [(s.level, s.state, s.trials) for s in data.levels] == [(0, "done", 50), (1, "done", 18),
                                                                  (2, "partial", 7)]
    text = data.markdown.read_text()
    assert "status: unfinished: 2 of 4 levels done" in text
    assert_levels_match_ledger(sweep, text)
    assert_compute_matches_ledger(sweep, text)
    # the pending level's best point among those with both seeds recorded
    trials = pd.read_parquet(sweep / "trials.parquet")
    pending = trials[trials["level"] == 2]
    full = pending.groupby(["lr", "init_std"]).filter(lambda g: len(g) == 2)
    assert data.levels[2].best_loss == pytest.approx(full.groupby(["lr", "init_std"])["final_loss"].mean().min())
    # two levels: a drift fit from the grid's resolution; no loss law, and the report says why
    assert all(isinstance(f, DriftFit) and f.n_points == 2 for f in data.drift.values())
    assert isinstance(data.loss_fit, str) and ">= 3 distinct widths; got 2" in data.loss_fit
    assert "No fit of L = A * width^(-alpha) + E" in text
    assert_figures_readable(data.outdir, {"transfer.png", "drift.png", "loss_vs_width.png", "compute.png",
                                          "grid_level0.png", "grid_level1.png", "grid_level2.png"})


def test_a_one_axis_sweep_gets_a_one_row_grid_and_a_single_transfer_panel(tmp_path):
    lr_only = SYNTHETIC_SPEC[: SYNTHETIC_SPEC.index("[axes.init_std]")]
    sweep = build_synthetic(tmp_path, spec_text=lr_only, stop_level=1, recorded=4)
    data = make_report(sweep, tmp_path / "report", coordcheck=False)
    assert [(s.grid, s.state) for s in data.levels] == [("5", "done"), ("3", "partial")]
    assert isinstance(data.drift["lr"], str) and ">= 2 widths" in data.drift["lr"]
    text = data.markdown.read_text()
    assert_levels_match_ledger(sweep, text)
    assert_figures_readable(data.outdir, {"transfer.png", "drift.png", "loss_vs_width.png", "compute.png",
                                          "grid_level0.png", "grid_level1.png"})


def test_a_sweep_with_no_trial_yet_gets_its_compute_plan(tmp_path):
    spec_path = tmp_path / "synthetic.toml"
    spec_path.write_text(SYNTHETIC_SPEC)
    spec = load_spec(spec_path)
    with SweepLock(tmp_path / "sweep"):
        open_sweep_dir(tmp_path / "sweep", SYNTHETIC_SPEC, spec.fingerprint(), spec.name)
    data = make_report(tmp_path / "sweep", tmp_path / "report", coordcheck=False)
    assert set(data.figures) == {"compute"} and data.compute.sweep_flops == 0.0
    assert "no trial is recorded yet" in data.markdown.read_text()


@pytest.mark.parametrize("args", [
    ["report", "{tmp}/missing", "-o", "{tmp}/out"],  # no such directory
    ["report", "{tmp}", "-o", "{tmp}/out"],  # a directory that is not a sweep
    ["report", "{sweep}", "-o", "{sweep}"],  # the report would land in the sweep itself
    ["report", "{sweep}", "-o", "{tmp}/out", "--axes", "lr,depth"],  # not a swept axis
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args):
    sweep = build_synthetic(tmp_path / "s", stop_level=0, recorded=3) if "{sweep}" in " ".join(args) else None
    argv = [a.format(tmp=tmp_path, sweep=sweep) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("telescope: error: ") and err.count("\n") == 1, err
