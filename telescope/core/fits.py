"""Pure numerical fits behind `telescope export --extrapolate` and `telescope report`.

Two laws from the design brief:

- drift of a hyperparameter optimum with width, x*(n) = x_inf - alpha/n (+ beta/n^2), fitted in
  the axis' own scale (log x on a log axis) by weighted linear least squares. That is muP's
  finite-width correction: the optimum levels off. A parameterization that scales some group by
  the wrong power of width makes it drift as a power of width instead, u = c + alpha ln n in scale
  space (x ~ n^alpha on a log axis), which never levels off; `fit_drift(model="power")` fits that,
  and `fit_best_drift` fits both and keeps the one the optima agree with better;
- loss against width, L(n) = A * n^(-alpha) + E. For a fixed exponent the law is linear in (A, E),
  so the fit is a 1-D search over alpha with a closed-form (A, E) at each step (variable
  projection). That has no starting-point sensitivity, which matters with 3-6 widths.

Numbers in, frozen dataclasses out; numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from telescope.errors import ConfigError

Scale = Literal["log", "linear"]
# "residuals": scatter about the fit; "grid_resolution" / "measurement": the per-point sigma the
# caller passed (for optima, the grid spacing; for losses, eval or seed noise); "none": unknown.
UncertaintySource = Literal["residuals", "grid_resolution", "measurement", "none"]
DriftModel = Literal["inverse", "power"]
# Each drift model's law, in words a reader sees (exports, notes, the report).
DRIFT_LAWS: dict[str, str] = {"inverse": "x*(n) = x_inf - alpha/n", "power": "x*(n) = c * n^alpha"}

# Exponent search range for the loss law. Published width/size exponents sit around 0.1-0.7; the
# wide margin only keeps a real optimum off the edge, and an optimum on the edge is flagged.
_ALPHA_MIN, _ALPHA_MAX = 1e-3, 4.0
_ALPHA_GRID = np.geomspace(_ALPHA_MIN, _ALPHA_MAX, 400)


class InsufficientDataError(ConfigError):
    """Too few (distinct) widths to determine the requested fit.

    A ConfigError so the CLI prints it as one line; callers that can go on without the fit (a
    report) catch this type alone.
    """


@dataclass(frozen=True)
class Prediction:
    """A fitted value at one width, with its standard error.

    `value` is in real space. `stderr` is in the fit's scale space: on a log axis it is in log
    units, i.e. the true value lies within a factor exp(stderr) at one standard error. NaN when
    the fit's uncertainty is unknown.
    """

    value: float
    stderr: float
    scale: Scale

    def interval(self, z: float = 1.0) -> tuple[float, float]:
        """The value +- z standard errors, mapped to real space (a symmetric band in log space
        is a multiplicative one in real space, never a negative learning rate)."""
        if self.scale == "log":
            factor = math.exp(z * self.stderr)
            return self.value / factor, self.value * factor
        return self.value - z * self.stderr, self.value + z * self.stderr


@dataclass(frozen=True)
class DriftFit:
    """A drift law fitted in scale space u (ln x on a log axis): `model` "inverse" is
    u = x_inf - alpha/n (+ beta/n^2), "power" is u = x_inf + alpha ln n (x = c n^alpha on a log
    axis, with x_inf = ln c: the value at width 1, since a power law has no infinite-width limit).

    `x_inf`, `alpha`, `beta` and the covariance (parameter order x_inf, alpha[, beta]) are in
    scale space; `predict` maps back to real space, and for the inverse law `predict(math.inf)` is
    the real-space optimum at infinite width (`limit`). Either way alpha = 0 is "no drift". Stderrs
    are NaN when `uncertainty_source` is "none" (an exact 2-point fit with no per-point sigma
    given). `chi2` is the weighted sum of squared residuals (unweighted without sigma), what
    `fit_best_drift` compares with the other law's (`rival_chi2`); `residual_rms` and `r2` are unweighted, in scale space.
    """

    scale: Scale
    x_inf: float
    alpha: float
    beta: float | None
    x_inf_stderr: float
    alpha_stderr: float
    beta_stderr: float | None
    covariance: tuple[tuple[float, ...], ...]
    uncertainty_source: UncertaintySource
    n_points: int
    dof: int
    residual_rms: float
    r2: float
    model: DriftModel = "inverse"
    chi2: float = math.nan
    rival_chi2: float = math.nan  # the other law's chi2, where `fit_best_drift` compared the two

    @property
    def law(self) -> str:
        return DRIFT_LAWS[self.model]

    @property
    def limit(self) -> Prediction | None:
        """The optimum at infinite width: the inverse law's x_inf; None for a power law."""
        return self.predict(math.inf) if self.model == "inverse" else None

    def predict(self, n: float) -> Prediction:
        """Extrapolated optimum at width n (real space) with its scale-space stderr."""
        g = _drift_basis(np.array([float(n)]), self.beta is not None, self.model)[0]
        y = float(g @ self._params())
        value = math.exp(y) if self.scale == "log" else y
        return Prediction(value=value, stderr=_delta_stderr(g, self.covariance), scale=self.scale)

    def step(self, n_from: float, n_to: float) -> tuple[float, float]:
        """How far the fitted optimum moves from width n_from to n_to, in scale space, and that
        move's stderr: the difference of two predictions, whose errors are correlated (a shared
        x_inf cancels), so it is tighter than either prediction alone."""
        g_from, g_to = _drift_basis(np.array([float(n_from), float(n_to)]), self.beta is not None, self.model)
        g = g_to - g_from
        return float(g @ self._params()), _delta_stderr(g, self.covariance)

    def _params(self) -> np.ndarray:
        """The parameters in the covariance's order: x_inf, alpha[, beta]."""
        return np.array([self.x_inf, self.alpha] + ([self.beta] if self.beta is not None else []))


@dataclass(frozen=True)
class PowerLawFit:
    """L(n) = A * n^(-alpha) + E, with A >= 0 and E >= 0.

    Covariance (parameter order A, alpha, E) is the Gauss-Newton one at the optimum (the SSE's
    curvature); NaN when `uncertainty_source` is "none" (3 points and no per-point sigma).
    `at_bound` says a constraint is active (E = 0, A = 0, or alpha at the edge of its search
    range): the point estimate is then a constrained one and its stderrs are only indicative.
    """

    A: float
    alpha: float
    E: float
    A_stderr: float
    alpha_stderr: float
    E_stderr: float
    covariance: tuple[tuple[float, ...], ...]
    uncertainty_source: UncertaintySource
    at_bound: bool
    n_points: int
    dof: int
    residual_rms: float
    r2: float

    def predict(self, n: float) -> Prediction:
        """Loss at width n with its stderr; `predict(math.inf)` is E."""
        g = _power_law_gradient(float(n), self.A, self.alpha)
        value = self.A * float(n) ** -self.alpha + self.E
        return Prediction(value=value, stderr=_delta_stderr(g, self.covariance), scale="linear")


def fit_drift(
    widths: Sequence[float],
    optima: Sequence[float],
    *,
    scale: Scale = "linear",
    sigma: Sequence[float] | None = None,
    second_order: bool = False,
    model: DriftModel = "inverse",
) -> DriftFit:
    """Fit the drift of one hyperparameter's optimum across widths by `model` (see `DriftFit`).

    `optima` are real-space values (e.g. learning rates); on a log axis they are fitted as
    log(x). `sigma`, if given, is each optimum's standard uncertainty in scale space (log units on
    a log axis), typically from the level's grid spacing h: a uniform rounding error to the grid
    has std h/sqrt(12), h/2 is a conservative bound. Points are weighted by 1/sigma^2.

    Uncertainty: with more points than parameters the residual scatter is used, but never below
    what `sigma` alone implies: one or two degrees of freedom can show a small scatter by chance,
    and the grid cannot resolve the optimum better than its spacing. With exactly as many points
    as parameters the fit is exact and only `sigma` can say anything ("grid_resolution");
    without it the stderrs are NaN ("none").

    `second_order` adds beta/n^2 to the inverse law and needs at least 4 points.
    """
    if model not in DRIFT_LAWS:
        raise ValueError(f"model must be one of {', '.join(DRIFT_LAWS)}; got {model!r}")
    if second_order and model != "inverse":
        raise ValueError("second_order applies to the inverse law only")
    n, y, s = _validate(widths, optima, sigma, scale)
    n_params = 3 if second_order else 2
    min_points = 4 if second_order else 2
    if len(n) < min_points:
        raise InsufficientDataError(
            "widths",
            f"the {'second' if second_order else 'first'}-order drift fit needs optima at >= "
            f"{min_points} widths; got {len(n)}",
        )
    if len(np.unique(n)) < n_params:
        raise InsufficientDataError(
            "widths", f"the drift fit needs {n_params} distinct widths; got {len(np.unique(n))}"
        )
    X = _drift_basis(n, second_order, model)
    params, cov_unit = _weighted_lstsq(X, y, s)
    resid = y - X @ params
    dof = len(n) - n_params
    cov, source = _scale_covariance(cov_unit, resid, s, dof, "grid_resolution")
    stderr = np.sqrt(np.diag(cov))
    rms, r2 = _quality(y, X @ params)
    return DriftFit(
        scale=scale,
        x_inf=float(params[0]),
        alpha=float(params[1]),
        beta=float(params[2]) if second_order else None,
        x_inf_stderr=float(stderr[0]),
        alpha_stderr=float(stderr[1]),
        beta_stderr=float(stderr[2]) if second_order else None,
        covariance=_as_tuples(cov),
        uncertainty_source=source,
        n_points=len(n),
        dof=dof,
        residual_rms=rms,
        r2=r2,
        model=model,
        chi2=float(np.sum((resid if s is None else resid / s) ** 2)),
    )


def fit_best_drift(
    widths: Sequence[float],
    optima: Sequence[float],
    *,
    scale: Scale = "linear",
    sigma: Sequence[float] | None = None,
) -> DriftFit:
    """The drift law the optima agree with better: both have two parameters, so the smaller
    `chi2` is the likelier one. Two widths fit either exactly and cannot tell them apart; the
    inverse law, muP's own, is kept then (and on a tie)."""
    inverse = fit_drift(widths, optima, scale=scale, sigma=sigma)
    if inverse.dof < 1:
        return inverse
    power = fit_drift(widths, optima, scale=scale, sigma=sigma, model="power")
    best, other = (power, inverse) if power.chi2 < inverse.chi2 else (inverse, power)
    return replace(best, rival_chi2=other.chi2)


def fit_power_law(
    widths: Sequence[float],
    losses: Sequence[float],
    *,
    sigma: Sequence[float] | None = None,
) -> PowerLawFit:
    """Fit L(n) = A * n^(-alpha) + E to (width, best loss) pairs; 3 points determine it exactly.

    `sigma`, if given, is each loss's standard uncertainty (eval or seed noise); points are
    weighted by 1/sigma^2 and the same residual-versus-sigma rule as `fit_drift` applies.
    """
    n, L, s = _validate(widths, losses, sigma, "linear")
    if len(np.unique(n)) < 3:
        raise InsufficientDataError(
            "widths", f"the loss-vs-width fit needs losses at >= 3 distinct widths; got {len(np.unique(n))}"
        )
    w = np.ones_like(L) if s is None else 1.0 / s**2
    # Widths relative to the smallest keep n^-alpha near 1 whatever alpha is tried.
    u = n / n.min()

    def sse(alpha: float) -> float:
        return float(_linear_part(np.array([alpha]), u, L, w)[2][0])

    # A global grid first: with 3-6 noisy points the profile need not be unimodal.
    i = int(np.argmin(_linear_part(_ALPHA_GRID, u, L, w)[2]))
    alpha = _golden_min(sse, _ALPHA_GRID[max(i - 1, 0)], _ALPHA_GRID[min(i + 1, len(_ALPHA_GRID) - 1)])
    a_rel, E = (float(v[0]) for v in _linear_part(np.array([alpha]), u, L, w)[:2])
    A = a_rel * n.min() ** alpha  # back from (n / n_min)^-alpha to n^-alpha
    at_bound = a_rel == 0.0 or E == 0.0 or i in (0, len(_ALPHA_GRID) - 1)

    fitted = A * n**-alpha + E
    J = np.array([_power_law_gradient(float(m), A, alpha) for m in n])
    dof = len(n) - 3
    try:
        _, cov_unit = _weighted_lstsq(J, L, s)
        cov, source = _scale_covariance(cov_unit, L - fitted, s, dof, "measurement")
    except InsufficientDataError:
        # Singular curvature: A = 0 leaves alpha unidentified, and a vanishing alpha makes
        # A n^-alpha indistinguishable from E. The point fit stands; its error bars do not.
        cov, source = np.full((3, 3), np.nan), "none"
    stderr = np.sqrt(np.diag(cov))
    rms, r2 = _quality(L, fitted)
    return PowerLawFit(
        A=float(A),
        alpha=float(alpha),
        E=float(E),
        A_stderr=float(stderr[0]),
        alpha_stderr=float(stderr[1]),
        E_stderr=float(stderr[2]),
        covariance=_as_tuples(cov),
        uncertainty_source=source,
        at_bound=bool(at_bound),
        n_points=len(n),
        dof=dof,
        residual_rms=rms,
        r2=r2,
    )


# ---------------------------------------------------------------------------------------------


def _validate(
    widths: Sequence[float], values: Sequence[float], sigma: Sequence[float] | None, scale: Scale
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n = np.asarray(widths, dtype=float)
    x = np.asarray(values, dtype=float)
    if n.ndim != 1 or n.shape != x.shape:
        raise ValueError(f"widths and values must be 1-D of equal length; got {n.shape} and {x.shape}")
    if not (np.all(np.isfinite(n)) and np.all(n > 0)):
        raise ValueError(f"widths must be finite and positive; got {n.tolist()}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values must be finite; got {x.tolist()}")
    if scale == "log":
        if not np.all(x > 0):
            raise ValueError(f"a log axis needs positive values; got {x.tolist()}")
        x = np.log(x)
    elif scale != "linear":
        raise ValueError(f"scale must be 'log' or 'linear'; got {scale!r}")
    s = None
    if sigma is not None:
        s = np.asarray(sigma, dtype=float)
        if s.shape != x.shape or not (np.all(np.isfinite(s)) and np.all(s > 0)):
            raise ValueError(f"sigma must be finite, positive and one per point; got {np.ravel(s).tolist()}")
    return n, x, s


def _drift_basis(n: np.ndarray, second_order: bool, model: DriftModel = "inverse") -> np.ndarray:
    if model == "power":
        with np.errstate(invalid="ignore"):
            return np.stack([np.ones_like(n), np.log(n)], axis=1)
    columns = [np.ones_like(n), -1.0 / n] + ([1.0 / n**2] if second_order else [])
    return np.stack(columns, axis=1)


def _weighted_lstsq(X: np.ndarray, y: np.ndarray, sigma: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares: parameters and the unit covariance (X^T W X)^-1, W = 1/sigma^2.

    Columns like 1 and 1/n differ by the width's magnitude; scaling them to unit norm before the
    SVD keeps the solve and the inverse accurate.
    """
    w = np.ones(len(y)) if sigma is None else 1.0 / sigma
    A = X * w[:, None]
    norms = np.linalg.norm(A, axis=0)
    if np.any(norms == 0):
        raise InsufficientDataError("widths", "a fit parameter has no effect at these widths")
    U, S, Vt = np.linalg.svd(A / norms, full_matrices=False)
    if S[-1] <= 1e-10 * S[0]:
        raise InsufficientDataError("widths", "the fit is degenerate at these widths")
    V = Vt.T / norms[:, None]
    params = V @ ((U.T @ (y * w)) / S)
    cov_unit = (V / S**2) @ V.T
    return params, cov_unit


def _scale_covariance(
    cov_unit: np.ndarray,
    resid: np.ndarray,
    sigma: np.ndarray | None,
    dof: int,
    sigma_source: UncertaintySource,
) -> tuple[np.ndarray, UncertaintySource]:
    """Turn (X^T W X)^-1 into a covariance, and say where its scale came from."""
    if sigma is None:
        if dof > 0:
            return cov_unit * float(resid @ resid) / dof, "residuals"
        return np.full_like(cov_unit, np.nan), "none"
    # Scatter beyond the given sigma (chi2/dof > 1) is model error or extra noise the sigma does
    # not know about, so it widens the band; scatter below it is luck and never narrows it.
    chi2_per_dof = float(np.sum((resid / sigma) ** 2)) / dof if dof > 0 else 0.0
    if chi2_per_dof > 1.0:
        return cov_unit * chi2_per_dof, "residuals"
    return cov_unit, sigma_source


def _linear_part(
    alphas: np.ndarray, u: np.ndarray, L: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best (a, E) >= 0 for L = a * u^-alpha + E at each fixed alpha, and the weighted SSE.

    A two-variable QP with non-negativity: its minimum is the unconstrained one when feasible,
    else on the face E = 0 or the face a = 0 (each clipped to >= 0, which also covers the corner).
    Solved in closed form for every alpha at once, since the profile is evaluated on a grid.
    """
    f = u[None, :] ** -np.asarray(alphas, dtype=float)[:, None]
    sw, swL = np.sum(w), np.sum(w * L)
    sff, sf, sfL = np.sum(w * f * f, axis=1), np.sum(w * f, axis=1), np.sum(w * f * L, axis=1)
    det = sff * sw - sf * sf
    with np.errstate(divide="ignore", invalid="ignore"):
        a_free = (sfL * sw - sf * swL) / det
        e_free = (sff * swL - sf * sfL) / det
    candidates = [
        np.where((a_free >= 0) & (e_free >= 0) & (det > 0), a_free, np.nan),  # interior
        np.maximum(sfL / sff, 0.0),  # face E = 0
        np.zeros_like(sff),  # face a = 0
    ]
    e_candidates = [e_free, np.zeros_like(sff), np.full_like(sff, max(swL / sw, 0.0))]
    a = np.stack(candidates)  # (3, K)
    e = np.stack(e_candidates)
    sse = np.sum(w * (L[None, None, :] - a[..., None] * f[None] - e[..., None]) ** 2, axis=-1)
    sse = np.where(np.isnan(a), np.inf, sse)
    best = np.argmin(sse, axis=0)
    k = np.arange(sse.shape[1])
    return a[best, k], e[best, k], sse[best, k]


def _golden_min(func: Callable[[float], float], lo: float, hi: float, tol: float = 1e-12) -> float:
    """Minimiser of a unimodal func on [lo, hi] by golden-section search."""
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - invphi * (b - a), a + invphi * (b - a)
    fc, fd = func(c), func(d)
    while b - a > tol * max(1.0, abs(a) + abs(b)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - invphi * (b - a)
            fc = func(c)
        else:
            a, c, fc = c, d, fd
            d = a + invphi * (b - a)
            fd = func(d)
    return (a + b) / 2.0


def _power_law_gradient(n: float, A: float, alpha: float) -> np.ndarray:
    """d L / d (A, alpha, E) at width n."""
    if math.isinf(n):
        return np.array([0.0, 0.0, 1.0])
    term = n**-alpha
    return np.array([term, -A * term * math.log(n), 1.0])


def _delta_stderr(g: np.ndarray, covariance: tuple[tuple[float, ...], ...]) -> float:
    var = float(g @ np.array(covariance) @ g)
    return math.sqrt(var) if var >= 0 else math.nan


def _quality(y: np.ndarray, fitted: np.ndarray) -> tuple[float, float]:
    """Unweighted residual RMS and R^2 (NaN when the values do not vary at all)."""
    resid = y - fitted
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else math.nan
    return float(np.sqrt(np.mean(resid**2))), r2


def _as_tuples(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in m)
