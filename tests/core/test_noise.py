"""telescope.core.noise: every uncertainty and significance rule, on synthetic levels whose noise
is known (the rule's own grids, losses drawn from a known bowl plus Gaussian seed noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from telescope.core.drift import drift_fits, optimum_sigma
from telescope.core.fits import fit_drift
from telescope.core.noise import (
    SIGNIFICANCE, AxisEstimate, PointLoss, band, best_point, drift_sigmas, extrapolations, f_sf, level_noise,
    level_noises,
    point_loss, two_sided_p,
)
from telescope.core.numbers import format_to, format_uncertain, uncertainty_decimals
from telescope.core.rule import Axis, LevelResult, Observation, base_grid, find_optimum, simulate

LR = Axis("lr", 1e-3, 1e-1, "log", 5)
WD = Axis("weight_decay", 0.0, 0.2, "linear", 5, bounds=(0.0, math.inf))
LR_OPT = 0.02


def bowl(point, curvature=0.05):
    """lr matters (a bowl in ln lr), weight decay does not."""
    return 2.4 + curvature * (math.log(point["lr"]) - math.log(LR_OPT)) ** 2


def level(sigma: float, seeds: int, rng, axes=(LR, WD), loss=bowl) -> LevelResult:
    """One base-grid level of the rule, every point with `seeds` noisy seeds."""
    grid = base_grid(axes, 16)
    obs = [Observation(p, s, loss(p) + sigma * rng.standard_normal()) for p in grid.points() for s in range(seeds)]
    return LevelResult(0, 16, grid, tuple(obs), find_optimum(grid, obs), ())


# ---- the distributions the tests use -------------------------------------------------------------


def test_f_and_t_tails_match_their_closed_forms():
    for f in (0.1, 1.0, 3.0, 19.0):
        assert f_sf(f, 2, 2) == pytest.approx(1 / (1 + f), rel=1e-12)  # F(2, 2)
        t = math.sqrt(f)
        assert two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10)  # Cauchy
        assert f_sf(f, 2, 7) == pytest.approx((1 + 2 * f / 7) ** -3.5, rel=1e-12)  # F(2, d): (1 + 2f/d)^(-d/2)
    assert two_sided_p(1.959963984540054) == pytest.approx(0.05, rel=1e-9)
    assert f_sf(0.0, 3, 5) == 1.0 and f_sf(math.inf, 3, 5) == 0.0


# ---- a point's loss and the best point ------------------------------------------------------------


def test_a_points_loss_is_the_mean_over_seeds_with_their_spread():
    p = point_loss([2.4693 - 0.0082, 2.4693 + 0.0082])
    assert p.mean == pytest.approx(2.4693) and p.std == pytest.approx(0.0082 * math.sqrt(2))
    assert p.text() == "2.469 ± 0.012 (2 seeds)"
    assert math.isinf(point_loss([2.5, math.inf]).mean)  # a diverged seed makes the point infinitely bad
    one = point_loss([2.5488])
    assert math.isnan(one.std) and one.text() == "2.5488 (1 seed: no seed spread)"


def test_the_best_point_is_the_best_mean_among_points_with_every_seed():
    losses = {"a": [2.5488, 2.5728], "b": [2.50], "c": [2.56, math.inf], "d": [2.57, 2.575]}
    key, loss = best_point(losses, n_seeds=2)
    assert key == "a" and loss.mean == pytest.approx(2.5608)  # not b's lone seed, not a's best seed
    assert best_point({"x": [math.inf, 2.0]}, 2) is None


# ---- printing to the precision the uncertainty allows -----------------------------------------


@pytest.mark.parametrize("value, err, text", [
    (0.05303311463939008, 0.008, "0.053 ± 0.008"),
    (2.4693, 0.0116, "2.469 ± 0.012"),  # a leading 1 keeps a second digit
    (1234.5, 30, "1230 ± 30"),
    (-6.94e-18, 0.004, "0.000 ± 0.004"),  # float dust around 0 prints as 0, never -0
    (0.06, 1e-17, "0.06"),  # an uncertainty below any digit worth printing
    (3.14159, math.nan, "3.142"),  # none known: four significant digits
])
def test_values_print_to_the_digits_their_uncertainty_allows(value, err, text):
    assert format_uncertain(value, err) == text


def test_an_estimate_displays_the_digits_its_band_allows():
    e = AxisEstimate("lr", 0.05303311463939008, 0.15, band(LR, 0.05303311463939008, 0.15))
    assert e.decimals == uncertainty_decimals(e.value, (e.band[1] - e.band[0]) / 2) == 3
    assert e.display == "0.053" and e.text() == "0.053 [0.046, 0.062]"
    assert e.to_dict()["value"] == 0.05303311463939008  # full precision for machines
    assert AxisEstimate("lr", 0.0531, math.nan, (0.0531, 0.0531)).text() == "0.0531 (no noise estimate)"


def test_every_band_stays_in_the_axis_valid_range():
    lo, hi = band(WD, 0.0, 0.0223)
    assert (lo, hi) == (0.0, pytest.approx(0.0223))  # not [-0.0223, 0.0223]
    assert band(LR, 0.02, 0.5)[0] > 0
    capped = Axis("frac", 0.1, 0.9, "linear", 3, bounds=(0.0, 1.0))
    assert band(capped, 0.95, 0.2) == (pytest.approx(0.75), 1.0)


# ---- a level's noise -------------------------------------------------------------------------


def test_seed_noise_is_pooled_over_the_levels_points():
    rng = np.random.default_rng(1)
    estimates = [level_noise(level(0.02, 2, rng), draws=2).noise for _ in range(20)]
    assert {n.source for n in estimates} == {"seeds"} and {n.dof for n in estimates} == {25}
    assert np.mean([n.sigma for n in estimates]) == pytest.approx(0.02, rel=0.1)  # 500 dof in all


def test_one_seed_takes_its_noise_from_the_quadratics_residuals():
    rng = np.random.default_rng(2)
    estimates = [level_noise(level(0.02, 1, rng), draws=2).noise for _ in range(30)]
    assert {n.source for n in estimates} == {"residuals"}
    # 3 dof each (a 3x3 neighbourhood, 6 terms): the pooled variance is close to the truth
    assert math.sqrt(np.mean([n.sigma**2 for n in estimates])) == pytest.approx(0.02, rel=0.25)
    assert "no seed spread" in estimates[0].text()


def test_one_seed_and_no_residuals_to_spare_has_no_noise_estimate():
    axis = Axis("lr", 1e-3, 1e-1, "log", 3)
    nz = level_noise(level(0.02, 1, np.random.default_rng(3), axes=(axis,)))
    assert nz.noise.source == "none" and "no noise estimate exists" in nz.noise.text()
    (lr,) = nz.axes.values()
    assert math.isnan(lr.stderr) and lr.measurable is None and lr.note is None
    assert lr.to_dict()["stderr_scale_space"] is None  # strict JSON: no NaN


def test_the_optimums_uncertainty_matches_its_spread_over_repeated_sweeps():
    rng = np.random.default_rng(4)
    lrs, stderrs = [], []
    for _ in range(30):
        lv = level(0.01, 2, rng)
        lrs.append(math.log(lv.optimum.point["lr"]))
        stderrs.append(level_noise(lv, draws=60).axes["lr"].stderr)
    ratio = np.mean(stderrs) / np.std(lrs, ddof=1)
    assert 0.7 < ratio < 1.8, ratio  # honest, erring on the side of caution


def test_a_noise_free_level_is_as_certain_as_its_refinement():
    lv = level(0.0, 2, np.random.default_rng(5))
    nz = level_noise(lv)
    assert nz.noise.sigma == 0 and nz.same_best == 1.0
    assert nz.axes["lr"].stderr == 0 and nz.axes["lr"].measurable is True


def test_an_unrefined_axis_carries_the_grids_resolution():
    lv = level(0.0, 1, np.random.default_rng(6), loss=lambda p: 2.4 + p["weight_decay"] + (math.log(p["lr"]) - math.log(0.02)) ** 2)
    assert lv.optimum.method != "quadratic" and lv.optimum.point["weight_decay"] == 0.0  # on its bound
    wd = level_noise(lv).axes["weight_decay"]
    assert wd.stderr == pytest.approx(lv.grid.spacing("weight_decay") / math.sqrt(12))
    assert wd.band[0] == 0.0


# ---- an axis's effect ------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [2, 1])
def test_an_axis_without_effect_is_flagged_at_the_stated_rate(seeds):
    rng = np.random.default_rng(7 + seeds)
    levels = [level(0.01, seeds, rng) for _ in range(120)]
    verdicts = [level_noise(lv, draws=2).axes for lv in levels]
    false_alarms = np.mean([v["weight_decay"].measurable for v in verdicts])
    assert false_alarms < 2.5 * SIGNIFICANCE, false_alarms  # ~5% by construction; 120 levels
    assert all(v["lr"].measurable for v in verdicts)  # lr moves the loss by ~0.4, 40 sigma
    note = next(v["weight_decay"].note for v in verdicts if v["weight_decay"].measurable is False)
    assert note.startswith("weight_decay: no measurable effect at this horizon (p = ")
    assert "across this level's values 0..0.2" in note


def test_an_axis_without_effect_is_uncertain_across_its_whole_range():
    nz = level_noise(level(0.01, 2, np.random.default_rng(9)))
    wd = nz.axes["weight_decay"]
    assert wd.measurable is False
    assert wd.band[0] <= 0.0 and wd.band[1] >= 0.2 and wd.stderr >= 0.2 / math.sqrt(12)


def test_a_small_effect_is_found_with_enough_seeds_and_missed_without():
    def slope(p):
        return bowl(p) + 0.02 * p["weight_decay"]  # 0.004 across the grid, well below one seed's noise

    rng = np.random.default_rng(10)

    def found(seeds: int) -> float:
        return np.mean([level_noise(level(0.01, seeds, rng, loss=slope), draws=2).axes["weight_decay"].measurable
                        for _ in range(15)])

    assert found(2) < 0.5 and found(64) > 0.9


def test_a_sampler_levels_effects_are_tested_by_regression():
    rng = np.random.default_rng(11)
    grid = base_grid((LR, WD), 16)
    lo, hi = (math.log(v) for v in grid.box()["lr"])
    points = [{"lr": math.exp(rng.uniform(lo, hi)), "weight_decay": rng.uniform(0, 0.2)} for _ in range(25)]
    obs = [Observation(p, s, bowl(p) + 0.01 * rng.standard_normal()) for p in points for s in range(2)]
    lv = LevelResult(0, 16, grid, tuple(obs), find_optimum(grid, obs), ())
    assert lv.optimum.method == "sample"
    nz = level_noise(lv)
    assert nz.axes["lr"].measurable is True and nz.axes["weight_decay"].measurable is False
    assert nz.axes["lr"].stderr >= 0 and nz.loss.n_seeds == 2


# ---- the drift extrapolation -----------------------------------------------------------------


def drifting(alpha: float, sigma: float, widths=(16, 32, 64, 128), seed: int = 12, min_points: int = 1):
    rng = np.random.default_rng(seed)

    def loss(p, width, s):
        target = math.log(LR_OPT) + alpha / width
        return 2.4 + 0.05 * (math.log(p["lr"]) - target) ** 2 + sigma * rng.standard_normal()

    return simulate((LR, WD), widths, loss, seeds=2, min_points=min_points).levels


def test_a_measured_drift_is_extrapolated():
    # ln lr* = ln 0.02 + 20/n: from 0.07 at width 16 to 0.024 at 128; 3x3 grids find each optimum
    levels = drifting(alpha=20.0, sigma=1e-4, min_points=3)
    noises = level_noises(levels)
    ex = extrapolations((LR, WD), levels, noises, 1024)
    lr = ex["lr"]
    assert lr.source == "drift" and lr.note is None and lr.alpha_significant
    assert lr.estimate.value == pytest.approx(lr.fit.predict(1024).value)
    truth, calibration = math.log(LR_OPT) + 20.0 / 1024, math.log(levels[-1].optimum.point["lr"])
    assert abs(math.log(lr.estimate.value) - truth) < abs(calibration - truth) / 2  # the drift was worth following
    # weight decay does not drift: its alpha is not significant, and the calibration optimum stands
    wd = ex["weight_decay"]
    assert wd.source == "calibration optimum" and not wd.alpha_significant
    assert "is not significantly non-zero" in wd.note and "the calibration optimum stands" in wd.note
    assert wd.estimate == noises[-1].axes["weight_decay"] and wd.estimate.band[0] >= 0.0


def test_an_insignificant_alpha_falls_back_to_the_calibration_optimum():
    levels = drifting(alpha=0.0, sigma=0.02, widths=(16, 32, 64))
    noises = level_noises(levels)
    lr = extrapolations((LR, WD), levels, noises, 2048)["lr"]
    assert lr.fit.dof == 1 and lr.alpha_p >= SIGNIFICANCE
    assert lr.source == "calibration optimum" and lr.estimate.value == levels[-1].optimum.point["lr"]
    assert lr.note.startswith("alpha = ") and f"(p = {lr.alpha_p:.2g})" in lr.note


def test_a_fit_with_no_degree_of_freedom_is_not_a_prediction():
    levels = drifting(alpha=20.0, sigma=1e-4, widths=(16, 32))
    ex = extrapolations((LR, WD), levels, level_noises(levels), 1024)["lr"]
    assert ex.exact and ex.fit.dof == 0
    assert ex.source == "calibration optimum" and "exact interpolation, not a prediction" in ex.note


def test_a_drift_by_a_power_of_width_is_extrapolated_as_one():
    # lr* grows as sqrt(width), as Muon's under the paper's lr/m rule does: x_inf - alpha/n would
    # level off below it; three or more levels show the power law fits, and the export follows it
    rng = np.random.default_rng(5)

    def loss(p, width, s):
        target = math.log(0.002) + 0.5 * math.log(width)
        return 2.4 + 0.05 * (math.log(p["lr"]) - target) ** 2 + 1e-4 * rng.standard_normal()

    levels = simulate((LR, WD), (16, 32, 64, 128), loss, seeds=2, min_points=3).levels
    lr = extrapolations((LR, WD), levels, level_noises(levels), 1024)["lr"]
    assert lr.source == "drift" and lr.fit.model == "power" and lr.alpha_significant
    assert lr.fit.alpha == pytest.approx(0.5, abs=0.1) and lr.fit.chi2 < lr.fit.rival_chi2
    truth = 0.002 * 1024**0.5
    inverse = fit_drift([lv.width for lv in levels], [lv.optimum.point["lr"] for lv in levels], scale="log",
                        sigma=drift_sigmas(levels, level_noises(levels))["lr"])
    assert abs(math.log(lr.estimate.value / truth)) < abs(math.log(inverse.predict(1024).value / truth)) / 2
    assert "x*(n) = x_inf - alpha/n" not in (lr.note or "")


def test_a_drift_below_the_valid_range_is_clipped_to_it():
    def loss(p, width, s):  # weight decay's optimum falls fast with width, towards and past 0
        return 2.4 + (math.log(p["lr"]) - math.log(LR_OPT)) ** 2 + 50 * (p["weight_decay"] - (0.05 + 2.0 / width)) ** 2

    levels = simulate((LR, WD), (16, 32, 64, 128), loss, seeds=1).levels
    noises = level_noises(levels)
    wd = extrapolations((LR, WD), levels, noises, 1024)["weight_decay"]
    for lv, nz in zip(levels, noises):
        assert all(nz.axes[n].band[0] >= 0.0 for n in ("weight_decay",))
    assert wd.estimate.value >= 0.0 and wd.estimate.band[0] >= 0.0


def test_the_rules_centring_still_weights_optima_by_the_grid_alone():
    levels = drifting(alpha=20.0, sigma=0.01)
    plain = drift_fits((LR, WD), levels)
    grid_only = drift_fits((LR, WD), levels, sigmas={n: [optimum_sigma(lv, n) for lv in levels] for n in ("lr", "weight_decay")})
    assert plain == grid_only


def test_point_loss_to_dict_is_strict_json():
    assert PointLoss(2.5, math.nan, 1).to_dict() == {"loss_mean": 2.5, "loss_std": None, "n_seeds": 1,
                                                      "loss_text": "2.5000 (1 seed: no seed spread)"}
    assert format_to(-1e-18, 3) == "0.000"
