"""The drift and loss-vs-width fits recover known laws, and their error bars mean what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telescope.errors import ConfigError
from telescope.core.fits import DRIFT_LAWS, InsufficientDataError, fit_best_drift, fit_drift, fit_power_law

WIDTHS = np.array([128.0, 256.0, 512.0, 1024.0, 2048.0])
N_SEEDS = 400


def drift_law(n, x_inf, alpha, beta=0.0):
    return x_inf - alpha / n + beta / n**2


# --- drift: exact data --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    x_inf=st.floats(-10, 10),
    alpha=st.floats(-500, 500),
    base=st.sampled_from([32, 64, 128, 256]),
    levels=st.integers(2, 6),
)
def test_drift_recovers_exact_linear_data(x_inf, alpha, base, levels):
    n = base * 2.0 ** np.arange(levels)
    fit = fit_drift(n, drift_law(n, x_inf, alpha))
    assert math.isclose(fit.x_inf, x_inf, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(fit.alpha, alpha, rel_tol=1e-9, abs_tol=1e-9)
    assert fit.dof == levels - 2
    assert fit.residual_rms < 1e-9
    assert math.isclose(fit.predict(8192).value, drift_law(8192, x_inf, alpha), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(fit.predict(math.inf).value, x_inf, rel_tol=1e-9, abs_tol=1e-9)


def test_second_order_term_is_recovered_and_matters():
    x_inf, alpha, beta = 0.3, 40.0, 9000.0
    y = drift_law(WIDTHS, x_inf, alpha, beta)
    fit2 = fit_drift(WIDTHS, y, second_order=True)
    assert fit2.beta is not None and fit2.beta_stderr is not None
    assert fit2.x_inf == pytest.approx(x_inf, abs=1e-9)
    assert fit2.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit2.beta == pytest.approx(beta, rel=1e-9)
    assert len(fit2.covariance) == 3
    # Without the 1/n^2 term the same data leave a visible misfit and a biased limit.
    fit1 = fit_drift(WIDTHS, y)
    assert fit1.beta is None and fit1.beta_stderr is None
    assert abs(fit1.x_inf - x_inf) > 1e-3
    assert fit1.residual_rms > 1e3 * fit2.residual_rms


def test_second_order_needs_four_levels():
    with pytest.raises(InsufficientDataError):
        fit_drift(WIDTHS[:3], drift_law(WIDTHS[:3], 0.3, 40.0), second_order=True)


# --- drift: a power of width, and choosing between the laws -----------------------------------


@settings(max_examples=40, deadline=None)
@given(c=st.floats(-8, 2), alpha=st.floats(-1.5, 1.5), levels=st.integers(2, 6))
def test_power_drift_recovers_exact_data(c, alpha, levels):
    n = 32 * 2.0 ** np.arange(levels)
    lrs = np.exp(c + alpha * np.log(n))  # x = e^c n^alpha: straight in ln x against ln n
    fit = fit_drift(n, lrs, scale="log", model="power")
    assert fit.model == "power" and fit.law == DRIFT_LAWS["power"] and fit.limit is None
    assert fit.alpha == pytest.approx(alpha, abs=1e-9) and fit.x_inf == pytest.approx(c, abs=1e-8)
    assert fit.predict(4096).value == pytest.approx(math.exp(c) * 4096**alpha, rel=1e-8)
    step, _ = fit.step(n[-1], 2 * n[-1])
    assert step == pytest.approx(alpha * math.log(2), abs=1e-9)  # the same ln-step every doubling


def test_the_better_law_is_chosen_and_two_widths_keep_muPs():
    n = np.array([32.0, 64.0, 128.0, 256.0])
    sigma = [0.05] * 4
    power = np.exp(math.log(0.01) + 0.5 * np.log(n))  # a sqrt(width) drift: never levels off
    inverse = np.exp(math.log(0.05) - 20.0 / n)  # muP's finite-width drift: levels off
    chosen = fit_best_drift(n, power, scale="log", sigma=sigma)
    assert chosen.model == "power" and chosen.chi2 < 1e-12 < chosen.rival_chi2
    assert chosen.predict(1024).value == pytest.approx(0.01 * 1024**0.5, rel=1e-8)
    kept = fit_best_drift(n, inverse, scale="log", sigma=sigma)
    assert kept.model == "inverse" and kept.chi2 < kept.rival_chi2
    assert kept.limit.value == pytest.approx(0.05, rel=1e-8)
    # both laws pass exactly through two points: nothing tells them apart, muP's law is kept
    two = fit_best_drift(n[:2], power[:2], scale="log", sigma=sigma[:2])
    assert two.model == "inverse" and two.dof == 0 and math.isnan(two.rival_chi2)


def test_a_power_law_has_no_second_order_term():
    with pytest.raises(ValueError, match="inverse law only"):
        fit_drift(WIDTHS, drift_law(WIDTHS, 0.3, 40.0), model="power", second_order=True)
    with pytest.raises(ValueError, match="model must be one of"):
        fit_drift(WIDTHS, drift_law(WIDTHS, 0.3, 40.0), model="cubic")


# --- drift: log axes ----------------------------------------------------------------------------


def test_log_axis_is_fitted_in_log_space():
    log_lr_inf, alpha = math.log(3e-3), 80.0
    lrs = np.exp(drift_law(WIDTHS, log_lr_inf, alpha))
    fit = fit_drift(WIDTHS, lrs, scale="log")
    assert fit.scale == "log"
    assert fit.x_inf == pytest.approx(log_lr_inf, abs=1e-9)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.predict(math.inf).value == pytest.approx(3e-3, rel=1e-9)
    assert fit.predict(4096).value == pytest.approx(math.exp(drift_law(4096, log_lr_inf, alpha)), rel=1e-9)
    # The same values fitted on a linear axis follow a different law.
    assert fit_drift(WIDTHS, lrs).residual_rms > 1e-6


def test_log_axis_band_is_multiplicative():
    rng = np.random.default_rng(0)
    lrs = np.exp(drift_law(WIDTHS, math.log(1e-2), 200.0) + rng.normal(0, 0.3, len(WIDTHS)))
    pred = fit_drift(WIDTHS, lrs, scale="log").predict(8192)
    assert pred.stderr > 0.05  # in log units
    lo, hi = pred.interval(3.0)
    assert 0 < lo < pred.value < hi
    assert lo * hi == pytest.approx(pred.value**2, rel=1e-12)
    assert hi / pred.value == pytest.approx(math.exp(3.0 * pred.stderr), rel=1e-12)


def test_log_axis_rejects_non_positive_values():
    with pytest.raises(ValueError, match="positive"):
        fit_drift(WIDTHS, [1e-3, 2e-3, 0.0, 3e-3, 3e-3], scale="log")


# --- drift: uncertainty -------------------------------------------------------------------------


def _noisy_drift_fits(sigma_known: bool, noise: float = 0.05):
    x_inf, alpha = math.log(2e-3), 60.0
    fits = []
    for seed in range(N_SEEDS):
        rng = np.random.default_rng(seed)
        lrs = np.exp(drift_law(WIDTHS, x_inf, alpha) + rng.normal(0, noise, len(WIDTHS)))
        sigma = [noise] * len(WIDTHS) if sigma_known else None
        fits.append(fit_drift(WIDTHS, lrs, scale="log", sigma=sigma))
    est = np.array([[f.x_inf, f.alpha] for f in fits])
    se = np.array([[f.x_inf_stderr, f.alpha_stderr] for f in fits])
    return fits, np.abs(est - [x_inf, alpha]) / se, est, se


def test_known_sigma_stderr_matches_the_spread_and_covers():
    fits, z, est, se = _noisy_drift_fits(sigma_known=True)
    # The sigma-implied stderr is the floor and equals the true sampling spread.
    floor = se.min(axis=0)
    assert np.allclose(est.std(axis=0), floor, rtol=0.1)
    assert np.all(z < 3.5)
    assert np.mean(z < 3.0) >= 0.99
    # Floored at sigma, the 1-stderr band covers at least its nominal 68%, but not wildly more.
    assert 0.66 <= np.mean(z[:, 0] < 1.0) <= 0.85
    sources = {f.uncertainty_source for f in fits}
    assert sources == {"grid_resolution", "residuals"}


def test_residual_stderr_matches_the_spread():
    fits, z, est, se = _noisy_drift_fits(sigma_known=False)
    assert {f.uncertainty_source for f in fits} == {"residuals"}
    # The true sampling spread, from the same design with the noise level known.
    exact = fit_drift(WIDTHS, np.exp(drift_law(WIDTHS, -6.0, 60.0)), scale="log", sigma=[0.05] * len(WIDTHS))
    true_var = np.array([exact.x_inf_stderr, exact.alpha_stderr]) ** 2
    assert est.var(axis=0) == pytest.approx(true_var, rel=0.2)
    # s^2 is unbiased for the variance; with 3 dof, |t| < 3 holds 94% of the time.
    assert np.mean(se**2, axis=0) == pytest.approx(true_var, rel=0.15)
    assert np.mean(z < 3.0) >= 0.9


def test_residuals_beyond_sigma_widen_the_band():
    rng = np.random.default_rng(1)
    y = drift_law(WIDTHS, 0.5, 20.0) + rng.normal(0, 0.2, len(WIDTHS))
    grid_only = fit_drift(WIDTHS[:2], y[:2], sigma=[0.01] * 2)
    fit = fit_drift(WIDTHS, y, sigma=[0.01] * len(WIDTHS))
    assert fit.uncertainty_source == "residuals"
    no_sigma = fit_drift(WIDTHS, y)
    assert fit.x_inf_stderr == pytest.approx(no_sigma.x_inf_stderr, rel=1e-9)
    assert grid_only.uncertainty_source == "grid_resolution"


def test_two_points_fit_exactly_with_unknown_uncertainty():
    n = np.array([256.0, 512.0])
    fit = fit_drift(n, drift_law(n, 0.7, 30.0))
    assert fit.x_inf == pytest.approx(0.7, abs=1e-12)
    assert fit.alpha == pytest.approx(30.0, rel=1e-12)
    assert fit.dof == 0
    assert fit.uncertainty_source == "none"
    assert math.isnan(fit.x_inf_stderr) and math.isnan(fit.alpha_stderr)
    pred = fit.predict(4096)
    assert pred.value == pytest.approx(drift_law(4096, 0.7, 30.0))
    assert math.isnan(pred.stderr)


def test_two_points_take_their_uncertainty_from_the_grid():
    n1, n2, s = 256.0, 512.0, 0.1
    fit = fit_drift([n1, n2], np.exp(drift_law(np.array([n1, n2]), -6.0, 30.0)), scale="log", sigma=[s, s])
    assert fit.uncertainty_source == "grid_resolution"
    # x_inf = (n2 y2 - n1 y1) / (n2 - n1): independent errors s propagate exactly.
    assert fit.x_inf_stderr == pytest.approx(s * math.hypot(n1, n2) / (n2 - n1), rel=1e-12)
    assert fit.predict(n1).stderr == pytest.approx(s, rel=1e-9)
    assert fit.predict(n2).stderr == pytest.approx(s, rel=1e-9)


def test_one_point_is_insufficient():
    with pytest.raises(InsufficientDataError, match="2 widths"):
        fit_drift([256], [1e-3], scale="log")
    # A ConfigError, so the CLI prints one line.
    with pytest.raises(ConfigError):
        fit_drift([256], [1e-3])


def test_repeated_width_is_insufficient():
    with pytest.raises(InsufficientDataError, match="distinct"):
        fit_drift([256, 256, 256], [1.0, 1.1, 0.9])


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError):
        fit_drift([128, 256], [1.0])
    with pytest.raises(ValueError):
        fit_drift([128, 256], [1.0, 2.0], sigma=[0.1, 0.0])


# --- loss vs width ------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [3, 4, 6])
@pytest.mark.parametrize(("A", "alpha", "E"), [(3.0, 0.31, 1.2), (40.0, 0.55, 2.5), (1.0, 0.12, 0.4)])
def test_power_law_recovers_exact_data(levels, A, alpha, E):
    n = 128.0 * 2.0 ** np.arange(levels)
    fit = fit_power_law(n, A * n**-alpha + E)
    assert fit.alpha == pytest.approx(alpha, abs=1e-6)
    assert fit.A == pytest.approx(A, rel=1e-5)
    assert fit.E == pytest.approx(E, abs=1e-6)
    assert not fit.at_bound
    assert fit.dof == levels - 3
    assert fit.uncertainty_source == ("none" if levels == 3 else "residuals")


def test_power_law_with_slight_noise():
    n = 128.0 * 2.0 ** np.arange(6)
    A, alpha, E = 3.0, 0.31, 1.2
    alphas, z = [], []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        losses = (A * n**-alpha + E) * (1 + rng.normal(0, 1e-3, len(n)))
        fit = fit_power_law(n, losses)
        alphas.append(fit.alpha)
        z.append(abs(fit.alpha - alpha) / fit.alpha_stderr)
        assert fit.E == pytest.approx(E, abs=0.06)
        assert fit.r2 > 0.99
    assert np.mean(alphas) == pytest.approx(alpha, abs=0.005)
    assert np.std(alphas) < 0.02
    assert np.mean(np.array(z) < 3.0) >= 0.9


def test_power_law_prediction_decreases_to_the_floor():
    n = np.array([128.0, 256.0, 512.0, 1024.0])
    rng = np.random.default_rng(3)
    losses = (2.0 * n**-0.31 + 1.5) * (1 + rng.normal(0, 1e-3, len(n)))
    fit = fit_power_law(n, losses)
    grid = np.geomspace(64, 1e7, 50)
    values = np.array([fit.predict(m).value for m in grid])
    assert np.all(np.diff(values) < 0)
    assert np.all(values > fit.E)
    assert fit.predict(math.inf).value == fit.E
    assert fit.predict(math.inf).stderr == pytest.approx(fit.E_stderr)


def test_power_law_measurement_sigma_for_three_points():
    n = np.array([256.0, 512.0, 1024.0])
    losses = 2.0 * n**-0.31 + 1.5
    fit = fit_power_law(n, losses, sigma=[1e-3] * 3)
    assert fit.uncertainty_source == "measurement"
    assert 0 < fit.alpha_stderr < math.inf
    assert fit.predict(2048).stderr > 0


def test_power_law_flat_losses_hit_a_bound():
    # No decrease with width: A n^-alpha degenerates into a constant, which the flag reports.
    for losses in ([2.0, 2.01, 1.99, 2.0], [2.0, 2.1, 2.2, 2.3]):
        fit = fit_power_law([128, 256, 512, 1024], losses)
        assert fit.at_bound
        assert fit.predict(4096).value == pytest.approx(np.mean(losses), abs=0.02)


def test_power_law_needs_three_distinct_widths():
    with pytest.raises(InsufficientDataError, match="3 distinct"):
        fit_power_law([128, 256, 256], [3.0, 2.8, 2.81])
