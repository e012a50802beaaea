"""The noise in a sweep's numbers, and what it lets them claim. Numbers in, frozen dataclasses
out; numpy only.

Seed noise. A point's loss is the mean over its seeds, with their spread (the std) beside it.
A level's noise is sigma, one seed's std, pooled over its points whose seeds all finished
(each adds n_seeds - 1 degrees of freedom). With one seed there is no spread to pool: sigma is
then the residual scatter of a full quadratic fitted, in scale space, to the points within one
grid spacing of the best one (two spacings where one leaves no degree of freedom, as for a
single axis or an optimum on an edge); where that fit has none either, no noise estimate exists.

An optimum's uncertainty, per axis, is a parametric bootstrap over the seed noise: every point's
mean is drawn again from N(mean, sigma^2 / n_seeds), the rule's own `find_optimum` runs on each
draw, and the std of the drawn optima in scale space is the uncertainty. Unlike a formula from
the quadratic fit's curvature alone, it carries every way noise moves the answer: another grid
point winning, the fitted vertex moving, the fit being clamped to one spacing. An axis the level
did not refine (a "grid" or "sample" optimum) also carries the grid's resolution, h / sqrt(12)
for spacing h (a uniform error over one cell). The draws use a fixed random seed, so every read
of the same ledger gives the same numbers. The bootstrap cannot see past the level's grid, so an
axis with no measurable effect (below) is given the uncertainty of its whole tested range: at
least that range's uniform std, and a band that covers it.

An axis's effect is tested against the noise. On a grid level the points that share every other
axis's value form a row along the axis; if the axis had no effect, each row's scatter about its
mean, in units of the means' noise, would sum to a chi-square with sum(points - 1) degrees of
freedom, and since sigma is itself estimated, the scatter per degree of freedom is F-distributed
against sigma's degrees of freedom. Off the grid (a sampler's points) the same test compares a
full quadratic with one that lacks the axis's terms. p < SIGNIFICANCE is a measurable effect;
otherwise the level cannot tell the axis's values apart at its training horizon, and says so.

The drift extrapolation (`extrapolations`) only predicts when it can back the prediction: a fit
with a degree of freedom left and an alpha significantly non-zero; otherwise the calibration
optimum stands, with the reason. Every band is clipped to the axis's valid range.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from telescope.core.drift import drift_fits, optimum_sigma
from telescope.core.fits import DriftFit
from telescope.core.numbers import format_to, format_uncertain, json_safe, uncertainty_decimals
from telescope.core.rule import Axis, LevelResult, Observation, find_optimum, quadratic_design, quadratic_pairs

SIGNIFICANCE = 0.05  # two-sided: an effect or a drift below this p-value is measured
BOOTSTRAP_DRAWS = 100  # the std of 100 draws is within ~15% of its limit (2 sigma): enough for its first digit
_ON_POINT = 1e-6  # spacings: a point this close to a neighbourhood's edge is inside it

NoiseSource = Literal["seeds", "residuals", "none"]
K = TypeVar("K", bound=Hashable)


# ---- statistics -------------------------------------------------------------------------------


def f_sf(f: float, d1: int, d2: int) -> float:
    """P(F >= f) for F ~ F(d1, d2): how often an effect with d1 degrees of freedom, measured
    against a noise estimated with d2, looks this large when it is zero."""
    if d1 < 1 or d2 < 1:
        raise ValueError(f"degrees of freedom must be >= 1; got {d1}, {d2}")
    if not f > 0:
        return 1.0
    if math.isinf(f):
        return 0.0
    return _betainc(d2 / 2, d1 / 2, d2 / (d2 + d1 * f))


def two_sided_p(t: float, dof: int | None = None) -> float:
    """P(|T| >= |t|): how often a zero effect measures as large as t standard errors; T normal
    when the standard error is known, Student's t with `dof` when it was estimated with `dof`
    degrees of freedom (t^2 is then F(1, dof)). NaN stays NaN."""
    if math.isnan(t):
        return math.nan
    return math.erfc(abs(t) / math.sqrt(2)) if dof is None else f_sf(t * t, 1, dof)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):  # where the fraction converges fast; else by symmetry
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Lentz's evaluation of the incomplete beta function's continued fraction."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


# ---- one point --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointLoss:
    """One point's final loss over its seeds: `mean` (infinite when a seed diverged or failed, as
    the rule ranks it) and `std`, the seed spread (NaN with fewer than two finite seeds)."""

    mean: float
    std: float
    n_seeds: int

    def text(self, digits: int = 4) -> str:
        """"2.469 ± 0.012 (2 seeds)", or "2.5488 (1 seed: no seed spread)"."""
        if not math.isfinite(self.mean):
            return "-"
        if self.n_seeds < 2 or not math.isfinite(self.std):
            return f"{self.mean:.{digits}f} ({self.n_seeds} seed{'s' if self.n_seeds != 1 else ''}: no seed spread)"
        return f"{format_uncertain(self.mean, self.std)} ({self.n_seeds} seeds)"

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"loss_mean": self.mean, "loss_std": self.std, "n_seeds": self.n_seeds,
                          "loss_text": self.text()})


def point_loss(losses: Sequence[float]) -> PointLoss:
    values = [float(v) for v in losses]
    if not values:
        raise ValueError("a point needs at least one loss")
    if not all(math.isfinite(v) for v in values):
        return PointLoss(math.inf, math.nan, len(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return PointLoss(float(np.mean(values)), std, len(values))


def best_point(points: Mapping[K, Sequence[float]], n_seeds: int) -> tuple[K, PointLoss] | None:
    """The point with the lowest mean loss among those with at least `n_seeds` losses recorded (a
    mean over fewer seeds would rank a point as the rule will not); None when none is finite."""
    full = [(key, point_loss(ls)) for key, ls in points.items() if len(ls) >= n_seeds]
    finite = [kv for kv in full if math.isfinite(kv[1].mean)]
    return min(finite, key=lambda kv: kv[1].mean) if finite else None


# ---- a level ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Noise:
    """A level's seed noise: `sigma`, one seed's std of the final loss (NaN when unknown), and
    where it came from, with its degrees of freedom."""

    sigma: float
    source: NoiseSource
    dof: int

    @property
    def known(self) -> bool:
        return self.source != "none"

    def text(self) -> str:
        if self.source == "seeds":
            return f"seed noise {_sig(self.sigma)} (std of one seed, {self.dof} degrees of freedom)"
        if self.source == "residuals":
            return (f"one seed, so no seed spread: noise {_sig(self.sigma)} from the quadratic's residuals "
                    f"around the optimum ({self.dof} degrees of freedom)")
        return "one seed and no residuals to spare: no noise estimate exists"

    def short(self) -> str:
        """For a colour bar: "seed noise σ = 0.012"."""
        if self.source == "seeds":
            return f"seed noise σ = {_sig(self.sigma)}"
        if self.source == "residuals":
            return f"one seed; noise σ ≈ {_sig(self.sigma)} from the fit's residuals"
        return "one seed: no noise estimate"

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"sigma": self.sigma, "source": self.source, "dof": self.dof, "text": self.text()})


def _sig(x: float) -> str:
    return f"{x:.2g}" if math.isfinite(x) else "unknown"


@dataclass(frozen=True)
class AxisEstimate:
    """One axis of an optimum (or of an extrapolated value) with its uncertainty.

    `value` is real and full precision; `stderr` is in scale space (log units on a log axis: the
    value is uncertain by a factor exp(stderr)), NaN when no noise estimate exists; `band` is
    value +- stderr in real space, clipped to the axis's valid range. `measurable`: whether the
    axis's effect on the loss beats the noise across the level (p_value < SIGNIFICANCE); None
    when it cannot be tested (the test is over the `tested` range of the level).
    """

    name: str
    value: float
    stderr: float
    band: tuple[float, float]
    measurable: bool | None = None
    p_value: float = math.nan
    tested: tuple[float, float] | None = None  # the level's lowest and highest value of the axis

    @property
    def decimals(self) -> int | None:
        lo, hi = self.band
        return uncertainty_decimals(self.value, (hi - lo) / 2)

    @property
    def display(self) -> str:
        """The value to the digits its uncertainty allows ("0.053"); 4 significant without one."""
        return format_to(self.value, self.decimals)

    @property
    def note(self) -> str | None:
        if self.measurable is False:
            where = f" across this level's values {self.tested[0]:.3g}..{self.tested[1]:.3g}" if self.tested else ""
            return (f"{self.name}: no measurable effect at this horizon (p = {self.p_value:.2g}):{where} the "
                    f"loss moves no more than the noise")
        return None

    def text(self) -> str:
        """"0.053 [0.046, 0.062]": the rounded value and its one-sigma band."""
        d = self.decimals
        if d is None:
            return self.display if math.isfinite(self.stderr) else f"{self.display} (no noise estimate)"
        lo, hi = self.band
        return f"{self.display} [{format_to(lo, d)}, {format_to(hi, d)}]"

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "value": self.value, "display": self.display, "text": self.text(), "stderr_scale_space": self.stderr,
            "band_1sigma": list(self.band), "measurable": self.measurable, "p_value": self.p_value,
            "note": self.note,
        })


def clip(axis: Axis, value: float) -> float:
    """`value` inside the axis's valid range (real space)."""
    lo, hi = axis.bounds
    return min(max(float(value), lo), hi)


def band(axis: Axis, value: float, stderr: float, z: float = 1.0) -> tuple[float, float]:
    """value +- z stderr (scale space) in real space, inside the axis's valid range; (value,
    value) when the stderr is unknown."""
    if not math.isfinite(stderr):
        return value, value
    lo_b, hi_b = axis.scale_bounds()
    u = axis.to_scale(value)
    lo, hi = max(u - z * stderr, lo_b), min(u + z * stderr, hi_b)
    if axis.scale == "log":
        return math.exp(lo), math.exp(hi)
    return lo + 0.0, hi + 0.0


@dataclass(frozen=True)
class LevelNoise:
    """What noise allows a level's optimum to claim: its loss with the seed spread, the level's
    noise, each axis's value with its uncertainty and whether it has a measurable effect, and
    `same_best`, the share of bootstrap draws in which the same grid point (or sample) wins
    (NaN without a noise estimate)."""

    level: int
    width: int
    loss: PointLoss
    noise: Noise
    axes: dict[str, AxisEstimate]
    same_best: float

    @property
    def notes(self) -> list[str]:
        return [a.note for a in self.axes.values() if a.note]

    def text(self) -> str:
        """"lr=0.053 [0.046, 0.062], init_std=0.0200 [0.0180, 0.0222]"."""
        return ", ".join(f"{a.name}={a.text()}" for a in self.axes.values())


_MEMO: dict[tuple, LevelNoise] = {}  # status, export and the report each ask for the same levels
_MEMO_SIZE = 64


def level_noise(level: LevelResult, *, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> LevelNoise:
    """The noise of a finished level and what it does to the level's optimum (module docstring)."""
    key = (draws, seed, level.level, level.width, level.grid,
           tuple((tuple(sorted(o.point.items())), o.seed, o.loss) for o in level.observations))
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_SIZE:
            del _MEMO[next(iter(_MEMO))]
        _MEMO[key] = _level_noise(level, draws, seed)
    return _MEMO[key]


def _level_noise(level: LevelResult, draws: int, seed: int) -> LevelNoise:
    grid, opt = level.grid, level.optimum
    names, axes = grid.names, [g.axis for g in grid.axes]
    losses: dict[tuple[float, ...], list[float]] = {}
    for o in level.observations:
        losses.setdefault(tuple(float(o.point[n]) for n in names), []).append(float(o.loss))
    keys = list(losses)
    points = [point_loss(losses[k]) for k in keys]
    means = np.array([p.mean for p in points])
    seeds = np.array([p.n_seeds for p in points], dtype=float)
    spacing = np.array([grid.spacing(n) for n in names])
    best_u = np.array([a.to_scale(opt.grid_point[n]) for a, n in zip(axes, names)])
    z = (np.array([[a.to_scale(v) for a, v in zip(axes, k)] for k in keys]) - best_u) / spacing
    best = int(np.argmin(np.max(np.abs(z), axis=1)))  # the optimum's grid point (or sample)

    noise = pooled_noise(points) or _residual_noise(z, means, int(seeds.max()))
    stderr, same = _bootstrap(level, keys, means, seeds, noise, draws, seed)
    p_values = _effects(level, keys, z, means, seeds, noise)
    estimates = {}
    for i, (axis, name) in enumerate(zip(axes, names)):
        refined = opt.method == "quadratic" or (opt.method == "parabola" and opt.point[name] != opt.grid_point[name])
        s = stderr[i] if refined else math.hypot(stderr[i], spacing[i] / math.sqrt(12))
        value = float(opt.point[name])
        p = p_values[i]
        measurable = None if math.isnan(p) else bool(p < SIGNIFICANCE)
        tested = (min(k[i] for k in keys), max(k[i] for k in keys))
        lo_hi = band(axis, value, s)
        if measurable is False:  # the loss cannot tell these values apart: the optimum is anywhere among them
            s = max(s, (axis.to_scale(tested[1]) - axis.to_scale(tested[0])) / math.sqrt(12))
            lo, hi = band(axis, value, s)
            lo_hi = (min(lo, tested[0]), max(hi, tested[1]))
        estimates[name] = AxisEstimate(name, value, s, lo_hi, measurable, p, tested)
    return LevelNoise(level.level, level.width, points[best], noise, estimates, same)


def pooled_noise(points: Sequence[PointLoss]) -> Noise | None:
    """One seed's std pooled over the points whose seeds all finished; None with no spread to pool."""
    finite = [p for p in points if math.isfinite(p.mean) and p.n_seeds > 1]
    dof = sum(p.n_seeds - 1 for p in finite)
    if dof == 0:
        return None
    return Noise(math.sqrt(sum((p.n_seeds - 1) * p.std**2 for p in finite) / dof), "seeds", dof)


def _residual_noise(z: np.ndarray, means: np.ndarray, n_seeds: int) -> Noise:
    """One seed: the scatter of a full quadratic through the optimum's neighbours, per seed."""
    finite = np.isfinite(means)
    for radius in (1, 2):
        near = finite & (np.max(np.abs(z), axis=1) <= radius + _ON_POINT)
        X, y = quadratic_design(z[near]), means[near]
        dof = len(y) - X.shape[1]
        if dof > 0 and np.linalg.matrix_rank(X) == X.shape[1]:
            resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
            return Noise(math.sqrt(float(resid @ resid) / dof * n_seeds), "residuals", dof)
    return Noise(math.nan, "none", 0)


def _bootstrap(level: LevelResult, keys: Sequence[tuple[float, ...]], means: np.ndarray, seeds: np.ndarray,
               noise: Noise, draws: int, seed: int) -> tuple[np.ndarray, float]:
    """Per axis, the std in scale space of the optimum over redrawn means; the share of draws
    whose best grid point is the level's own."""
    names, axes = level.grid.names, [g.axis for g in level.grid.axes]
    if not noise.known:
        return np.full(len(names), math.nan), math.nan
    if noise.sigma == 0:
        return np.zeros(len(names)), 1.0
    rng = np.random.default_rng(seed)
    drawn = means + rng.standard_normal((draws, len(keys))) * (noise.sigma / np.sqrt(seeds))  # inf stays inf
    points = [dict(zip(names, k)) for k in keys]
    optima = np.empty((draws, len(names)))
    same = 0
    for d, row in enumerate(drawn):
        o = find_optimum(level.grid, [Observation(p, 0, float(v)) for p, v in zip(points, row)])
        optima[d] = [a.to_scale(o.point[n]) for a, n in zip(axes, names)]
        same += dict(o.grid_point) == dict(level.optimum.grid_point)
    return optima.std(axis=0, ddof=1), same / draws


def _effects(level: LevelResult, keys: Sequence[tuple[float, ...]], z: np.ndarray, means: np.ndarray,
             seeds: np.ndarray, noise: Noise) -> list[float]:
    """Per axis, the p-value of "this axis has no effect on the loss" (NaN: untestable)."""
    k = len(level.grid.names)
    if not noise.known:
        return [math.nan] * k
    var = noise.sigma**2 / seeds  # each mean's noise
    index = [level.grid.index_of(dict(zip(level.grid.names, key))) for key in keys]
    if all(i is not None for i in index):
        return [_row_test(index, means, var, noise.dof, axis) for axis in range(k)]  # type: ignore[arg-type]
    return [_regression_test(z, means, var, noise.dof, axis) for axis in range(k)]


def _row_test(index: Sequence[tuple[int, ...]], means: np.ndarray, var: np.ndarray, noise_dof: int,
              axis: int) -> float:
    rows: dict[tuple[int, ...], list[int]] = {}
    for p, idx in enumerate(index):
        rows.setdefault(idx[:axis] + idx[axis + 1:], []).append(p)
    chi2, dof = 0.0, 0
    for members in rows.values():
        finite = [p for p in members if math.isfinite(means[p])]
        if finite and len(finite) < len(members):
            return 0.0  # along this axis some settings train and others diverge: an effect
        if len(finite) < 2:
            continue
        chi2 += _scatter(means[finite], var[finite])
        dof += len(finite) - 1
    return f_sf(chi2 / dof, dof, noise_dof) if dof else math.nan


def _scatter(y: np.ndarray, var: np.ndarray) -> float:
    """sum of ((y - weighted mean) / sd)^2; infinite for any scatter at all when the noise is 0."""
    if np.any(var == 0):
        return math.inf if np.ptp(y) > 1e-12 * (1 + np.abs(y).max()) else 0.0
    w = 1 / var
    mean = float(w @ y / w.sum())
    return float(w @ (y - mean) ** 2)


def _regression_test(z: np.ndarray, means: np.ndarray, var: np.ndarray, noise_dof: int, axis: int) -> float:
    """A full quadratic against one without `axis`'s terms, over the finite points."""
    finite = np.isfinite(means)
    x, y, v = z[finite], means[finite], var[finite]
    full = quadratic_design(x)
    if len(y) <= full.shape[1] or np.linalg.matrix_rank(full) < full.shape[1]:
        return math.nan
    k = x.shape[1]
    drop = {1 + axis} | {1 + k + c for c, pair in enumerate(quadratic_pairs(k)) if axis in pair}
    reduced = full[:, [c for c in range(full.shape[1]) if c not in drop]]
    if np.any(v == 0):
        return 0.0 if _sse(full, y, np.ones_like(y)) < _sse(reduced, y, np.ones_like(y)) - 1e-12 else 1.0
    w = 1 / v
    return f_sf(max(_sse(reduced, y, w) - _sse(full, y, w), 0.0) / len(drop), len(drop), noise_dof)


def _sse(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    sw = np.sqrt(w)
    resid = sw * y - (X * sw[:, None]) @ np.linalg.lstsq(X * sw[:, None], sw * y, rcond=None)[0]
    return float(resid @ resid)


def level_noises(levels: Sequence[LevelResult]) -> list[LevelNoise]:
    return [level_noise(lv) for lv in levels]


# ---- across levels ----------------------------------------------------------------------------


def drift_sigmas(levels: Sequence[LevelResult], noises: Sequence[LevelNoise]) -> dict[str, list[float]]:
    """Per axis, each level's optimum uncertainty in scale space for the drift fit: the larger of
    half the grid spacing (what the grid can resolve) and the bootstrap's uncertainty (what the
    noise lets it resolve)."""
    names = levels[0].grid.names if levels else ()
    out: dict[str, list[float]] = {}
    for name in names:
        out[name] = []
        for lv, nz in zip(levels, noises):
            s = nz.axes[name].stderr
            out[name].append(max(optimum_sigma(lv, name), s) if math.isfinite(s) else optimum_sigma(lv, name))
    return out


def measured_drift_fits(axes: Sequence[Axis], levels: Sequence[LevelResult],
                        noises: Sequence[LevelNoise]) -> dict[str, DriftFit | str]:
    """`drift_fits` with each optimum weighted by its measured uncertainty (`drift_sigmas`)."""
    return drift_fits(axes, levels, sigmas=drift_sigmas(levels, noises))


@dataclass(frozen=True)
class Extrapolation:
    """One axis's value for a wider model: the drift's prediction when the fit backs it, else the
    calibration optimum with `note` saying why. `fit` is the drift fit (None without one),
    `alpha_p` the two-sided p-value of alpha = 0 (NaN untested)."""

    estimate: AxisEstimate
    source: Literal["drift", "calibration optimum"]
    fit: DriftFit | None
    alpha_p: float
    note: str | None

    @property
    def alpha_significant(self) -> bool | None:
        """alpha is significantly non-zero (None: untested)."""
        return None if math.isnan(self.alpha_p) else bool(self.alpha_p < SIGNIFICANCE)

    @property
    def exact(self) -> bool:
        """The fit passes exactly through its points: no degree of freedom is left to test it."""
        return self.fit is not None and self.fit.dof == 0


def extrapolations(axes: Sequence[Axis], levels: Sequence[LevelResult], noises: Sequence[LevelNoise],
                   width: int, fits: Mapping[str, DriftFit | str] | None = None) -> dict[str, Extrapolation]:
    """Per axis, the value to train at `width` (class docstring); `fits` defaults to
    `measured_drift_fits`."""
    fits = measured_drift_fits(axes, levels, noises) if fits is None else fits
    calibration = noises[-1].axes
    out = {}
    for axis in axes:
        fit, name = fits[axis.name], axis.name
        if isinstance(fit, str):
            out[name] = Extrapolation(calibration[name], "calibration optimum", None, math.nan,
                                      f"no drift fit ({fit}): the calibration optimum stands")
            continue
        dof = fit.dof if fit.uncertainty_source == "residuals" else None  # an estimated stderr: Student's t
        p = two_sided_p(fit.alpha / fit.alpha_stderr, dof) if fit.alpha_stderr > 0 else math.nan
        alpha = f"alpha = {format_uncertain(fit.alpha, fit.alpha_stderr)}"
        note = None
        if fit.dof == 0:
            note = (f"{fit.law} passes exactly through the {fit.n_points} levels' optima (no degree of "
                    f"freedom left to test it): an exact interpolation, not a prediction; the calibration "
                    f"optimum stands")
        elif math.isnan(p):
            note = f"{alpha}: its uncertainty is unknown, so the calibration optimum stands"
        elif p >= SIGNIFICANCE:
            note = (f"{alpha} is not significantly non-zero (p = {p:.2g}): the drift is not measured, so the "
                    f"calibration optimum stands")
        if note:
            out[name] = Extrapolation(calibration[name], "calibration optimum", fit, p, note)
            continue
        at = fit.predict(width)
        value = clip(axis, at.value)  # a drift can head below weight decay 0: the range ends there
        estimate = AxisEstimate(name, value, at.stderr, band(axis, value, at.stderr))
        out[name] = Extrapolation(estimate, "drift", fit, p, None)
    return out
