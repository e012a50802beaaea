"""How the levels' optima drift with width, per axis, fitted in each axis's scale space over the
finished levels (telescope.core.fits does the fitting): x*(n) = x_inf - alpha/n, muP's finite-width
correction, or, where three or more levels' optima agree with it better, x*(n) = c * n^alpha, the
drift of a parameterization that is off by a power of width (`fit_best_drift`).

Export's `--extrapolate`, the report's drift figure, the notebook and the rule's drift-aware
centring (`drift_centres`, used by telescope.core.rule for `centre = "drift"`) all read the drift
here, so they agree on the uncertainty each optimum carries and on where it is heading. (Export
and the report weight each optimum by its measured uncertainty too, telescope.core.noise; the
rule's centring does not, so the seed noise never moves a grid.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telescope.core.fits import DriftFit, InsufficientDataError, fit_best_drift

if TYPE_CHECKING:  # the rule imports this module; these names are only annotations here
    from telescope.core.rule import Axis, LevelResult


def optimum_sigma(level: LevelResult, name: str) -> float:
    """An optimum's uncertainty in scale space: half its level's grid spacing. The grid cannot
    place the optimum more finely than that, and it keeps a two-level fit from claiming to be exact."""
    return level.grid.spacing(name) / 2


def drift_fits(axes: Sequence[Axis], levels: Sequence[LevelResult],
               sigmas: Mapping[str, Sequence[float]] | None = None) -> dict[str, DriftFit | str]:
    """The drift law per axis over the levels' optima (`fit_best_drift`), in each axis's scale
    space; a message instead of a fit where the levels are too few. Each optimum is weighted by its
    uncertainty: `sigmas[axis]` per level (scale space) where given, else `optimum_sigma` (the
    rule's centring uses the latter, so its grids depend on the grid alone, never on noise)."""
    fits: dict[str, DriftFit | str] = {}
    for axis in axes:
        sigma = (sigmas or {}).get(axis.name) or [optimum_sigma(lvl, axis.name) for lvl in levels]
        try:
            fits[axis.name] = fit_best_drift(
                [lvl.width for lvl in levels], [float(lvl.optimum.point[axis.name]) for lvl in levels],
                scale=axis.scale, sigma=sigma,
            )
        except InsufficientDataError as err:
            fits[axis.name] = err.message
    return fits


@dataclass(frozen=True)
class DriftCentre:
    """Where drift-aware centring puts one axis of the next level's grid, all in scale space.

    `previous` is the last finished level's optimum; `step` the drift model's move of the optimum
    from the last width to the new one, `step_stderr` its uncertainty from the levels' grid
    spacings; `predicted` = previous + step. The step is trusted only as far as it is measured:
    it is shrunk towards zero by its own uncertainty (`kept` = step * max(0, 1 - stderr^2 /
    step^2), the positive-part James-Stein estimate), so a drift within one standard error of
    none leaves the grid on the previous optimum, and then limited to one new spacing
    (`clamped` says the limit bit): a grid that moves further no longer holds the old optimum.
    `centre` = previous + the kept, limited step.
    """

    name: str
    law: str
    previous: float
    step: float
    step_stderr: float
    kept: float
    centre: float
    clamped: bool

    @property
    def predicted(self) -> float:
        return self.previous + self.step

    @property
    def moved(self) -> bool:
        return self.centre != self.previous


def drift_centres(
    axes: Sequence[Axis], levels: Sequence[LevelResult], width: int, spacings: Mapping[str, float]
) -> dict[str, DriftCentre]:
    """The next level's centre per axis from the drift law fitted over `levels` (`drift_fits`; each
    optimum uncertain by half its grid spacing, `optimum_sigma`); an axis whose fit is impossible
    (fewer than two levels) or not finite is left out, and the caller then centres it on the
    previous optimum."""
    if len(levels) < 2:
        return {}
    centres: dict[str, DriftCentre] = {}
    for axis in axes:
        fit = drift_fits([axis], levels)[axis.name]
        if isinstance(fit, str):
            continue
        step, stderr = fit.step(levels[-1].width, width)
        if not (math.isfinite(step) and math.isfinite(stderr)):
            continue
        kept = step * max(0.0, 1.0 - stderr**2 / step**2) if step else 0.0
        limit = spacings[axis.name]
        bounded = min(max(kept, -limit), limit)
        previous = axis.to_scale(levels[-1].optimum.point[axis.name])
        centres[axis.name] = DriftCentre(axis.name, fit.law, previous, step, stderr, kept, previous + bounded,
                                         bounded != kept)
    return centres
