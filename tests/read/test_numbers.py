"""Numbers a researcher can publish: status, export, the report and the live progress line, on
sweeps whose seed noise is known (tests/read/ledgers.py: lr matters, weight decay has no effect,
the optimum does not drift) and on the real sweep.

- "best loss" is the mean over seeds everywhere, with the seed spread beside it (the report's own
  text and figures: tests/read/test_figures.py);
- every optimum carries its uncertainty and prints to the digits it allows, the export keeping the
  full-precision value beside the rounded one;
- an axis that does not move the loss beyond the noise says so;
- the drift extrapolation falls back to the calibration optimum when alpha is not significant,
  a fit with no degree of freedom left predicts nothing, and every band stays in its valid range.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from telescope.core.numbers import format_uncertain
from telescope.read.export import export
from telescope.read.report.numbers import level_summaries, point_losses
from telescope.read.status import format_status, sweep_status
from telescope.run.progress import Progress
from telescope.state import row_loss, sweep_state
from tests.read.ledgers import SIGMA


def raw_points(out) -> pd.DataFrame:
    """Per (level, point), from the raw Parquet alone: mean and std of the final loss over seeds."""
    trials = pd.read_parquet(out / "trials.parquet")
    trials["rank"] = [row_loss(r) for r in trials.to_dict("records")]
    return trials.groupby(["level", "lr", "weight_decay"])["rank"].agg(["mean", "std", "count", "min"]).reset_index()


def best_raw(out, level: int) -> pd.Series:
    at = raw_points(out)
    at = at[at["level"] == level]
    return at.loc[at["mean"].idxmin()]


def test_best_loss_is_the_mean_over_seeds_everywhere(noisy):
    status = sweep_status(noisy)
    doc = export(noisy)
    spec, ledger, state = sweep_state(noisy)
    trials = ledger.trials()
    summaries = level_summaries(spec, state, trials, point_losses(trials, spec.axis_names))
    for lv, summary in zip(status["levels"], summaries):
        best = best_raw(noisy, lv["level"])
        assert lv["best_loss"] == pytest.approx(best["mean"]) == lv["optimum_loss"] == lv["loss_mean"]
        assert lv["best_loss_std"] == pytest.approx(best["std"]) == lv["loss_std"]
        assert lv["n_seeds"] == 2
        assert summary.best_loss == pytest.approx(best["mean"]) and summary.best_loss_std == pytest.approx(best["std"])
        assert f"best {format_uncertain(best['mean'], best['std'])} (2 seeds)" in format_status(status)
        # the live progress line counts the same best, fed the level's rows as the controller feeds them
        progress = Progress(io.StringIO())
        rows = trials[trials["level"] == lv["level"]]
        progress.start_level(lv["level"], lv["width"], len(rows), n_seeds=2)
        for r in rows.to_dict("records"):
            progress.record(r["status"], row_loss(r), {n: r[n] for n in spec.axis_names}, was_running=False)
        assert progress.tally.best_loss == pytest.approx(best["mean"])
        assert format_uncertain(best["mean"], best["std"]) in progress.tally.line()
    final = best_raw(noisy, len(state.levels) - 1)
    assert doc["provenance"]["loss"] == pytest.approx(final["mean"])
    assert doc["provenance"]["loss_std"] == pytest.approx(final["std"])
    # the distinction matters: a single seed's luck reads lower than the mean the rule ranks by
    assert raw_points(noisy)["min"].min() < min(lv["best_loss"] for lv in status["levels"])


def test_status_gives_each_level_its_noise_uncertainty_and_measurable_axes(noisy):
    status = sweep_status(noisy)
    json.dumps(status, allow_nan=False)  # strict JSON: no NaN anywhere
    level0 = status["levels"][0]
    assert level0["noise"]["source"] == "seeds" and level0["noise"]["dof"] >= 25
    assert level0["noise"]["sigma"] == pytest.approx(SIGMA, rel=0.35)  # the known noise, from 25+ dof
    lr, wd = level0["optimum_uncertainty"]["lr"], level0["optimum_uncertainty"]["weight_decay"]
    assert lr["measurable"] is True and wd["measurable"] is False  # the truth the ledger carries
    for lv in status["levels"]:
        for name, a in lv["optimum_uncertainty"].items():
            lo, hi = a["band_1sigma"]
            assert lo <= a["value"] <= hi and a["stderr_scale_space"] > 0
            assert a["value"] == lv["optimum"][name]  # full precision
            assert len(a["display"]) < len(repr(a["value"]))  # rounded for reading
        assert lv["optimum_uncertainty"]["weight_decay"]["band_1sigma"][0] >= 0.0  # weight decay's range
    text = format_status(status)
    assert "weight_decay: no measurable effect at this horizon (p = " in text
    assert "seed noise" in text
    for lv in status["levels"]:  # the optimum line prints the rounded value, never the full one
        for name, a in lv["optimum_uncertainty"].items():
            assert f"{name}={a['text']}" in text and repr(a["value"]) not in text
    assert status["optimum_display"] == {n: a["display"] for n, a in status["levels"][-1]["optimum_uncertainty"].items()}


def test_export_keeps_full_precision_beside_the_rounded_value_and_its_uncertainty(noisy):
    doc = export(noisy)
    json.dumps(doc, allow_nan=False)
    prov = doc["provenance"]
    assert {"hyperparameters", "provenance", "levels"} <= set(doc) and prov["bracketed"] in (True, False)
    assert prov["n_seeds"] == 2
    for name, value in doc["hyperparameters"].items():
        a = prov["axes"][name]
        decimals = len(a["display"].split(".")[1]) if "." in a["display"] else 0
        assert a["value"] == value and abs(float(a["display"]) - value) <= 0.5 * 10.0**-decimals
        assert decimals < 6 and a["band_1sigma"][0] <= value <= a["band_1sigma"][1]
    wd = prov["axes"]["weight_decay"]
    assert wd["measurable"] is False and wd["note"].startswith("weight_decay: no measurable effect at this horizon")
    assert prov["noise"]["source"] == "seeds" and prov["loss_display"].endswith("(2 seeds)")
    assert all("axes" in lv and "noise" in lv for lv in doc["levels"])


def test_the_extrapolation_falls_back_to_the_calibration_optimum_when_no_drift_is_measured(noisy):
    doc = export(noisy, extrapolate=True)
    json.dumps(doc, allow_nan=False)
    ex = doc["extrapolated"]
    for name, value in doc["hyperparameters"].items():  # the truth: no axis drifts
        e = ex[name]
        assert e["alpha_significant"] is False and e["alpha_p_value"] >= 0.05
        assert e["source"] == "calibration optimum" and e["value"] == value
        assert "is not significantly non-zero" in e["note"] and "the calibration optimum stands" in e["note"]
        assert e["predicted"] != value  # the fit's own prediction stays visible
    assert ex["weight_decay"]["band_1sigma"][0] >= 0.0
    assert ex["at_width"]["lr"]["embedding"] == pytest.approx(doc["hyperparameters"]["lr"])


def test_one_seed_says_there_is_no_seed_spread(one_seed):
    status = sweep_status(one_seed)
    json.dumps(status, allow_nan=False)
    text = format_status(status)
    for lv in status["levels"]:
        assert lv["loss_std"] is None and lv["n_seeds"] == 1 and lv["best_loss_std"] is None
        assert lv["noise"]["source"] in ("residuals", "none")
        assert lv["best_loss"] == pytest.approx(best_raw(one_seed, lv["level"])["mean"])
    assert "(1 seed: no seed spread)" in text and "one seed, so no seed spread" in text
    doc = export(one_seed, extrapolate=True)
    json.dumps(doc, allow_nan=False)
    assert doc["provenance"]["loss_std"] is None


def test_the_real_sweep_reads_end_to_end(real_sweep):
    status = sweep_status(real_sweep)
    doc = export(real_sweep, extrapolate=True)
    json.dumps(status, allow_nan=False)
    json.dumps(doc, allow_nan=False)
    text = format_status(status)
    assert "nan" not in text.lower()
    for lv in status["levels"]:
        assert {"loss_mean", "loss_std", "n_seeds", "optimum_uncertainty", "noise"} <= set(lv)
        for a in lv["optimum_uncertainty"].values():
            assert a["measurable"] in (True, False, None) and a["band_1sigma"][0] <= a["value"] <= a["band_1sigma"][1]
    for name in doc["hyperparameters"]:
        assert doc["extrapolated"][name]["source"] in ("drift", "calibration optimum")
        assert doc["provenance"]["axes"][name]["display"]
