"""How the levels' optima drift with width: x*(n) = x_inf - alpha/n per axis, fitted in each
axis's scale space over the finished levels (telescope.core.fits does the fitting).

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

from telescope.core.fits import DriftFit, InsufficientDataError, fit_drift

if TYPE_CHECKING:  # the rule imports this module; these names are only annotations here
    from telescope.core.rule import Axis, LevelResult


def optimum_sigma(level: LevelResult, name: str) -> float:
    """An optimum's uncertainty in scale space: half its level's grid spacing. The grid cannot
    place the optimum more finely than that, and it keeps a two-level fit from claiming to be exact."""
    return level.grid.spacing(name) / 2


def drift_fits(axes: Sequence[Axis], levels: Sequence[LevelResult],
               sigmas: Mapping[str, Sequence[float]] | None = None) -> dict[str, DriftFit | str]:
    """x*(n) = x_inf - alpha/n per axis over the levels' optima, in each axis's scale space;
    a message instead of a fit where the levels are too few. Each optimum is weighted by its
    uncertainty: `sigmas[axis]` per level (scale space) where given, else `optimum_sigma` (the
    rule's centring uses the latter, so its grids depend on the grid alone, never on noise)."""
    fits: dict[str, DriftFit | str] = {}
    for axis in axes:
        sigma = (sigmas or {}).get(axis.name) or [optimum_sigma(lvl, axis.name) for lvl in levels]
        try:
            fits[axis.name] = fit_drift(
                [lvl.width for lvl in levels], [float(lvl.optimum.point[axis.name]) for lvl in levels],
                scale=axis.scale, sigma=sigma,
            )
        except InsufficientDataError as err:
            fits[axis.name] = err.message
    return fits


@dataclass(frozen=True)
class DriftCentre:
    """Where drift-aware centring puts one axis of the next level's grid, all in scale space.

    `previous` is the last finished level's optimum, `predicted` the drift model's x*(n) at the
    new width, `centre` the prediction limited to one new spacing from `previous` (`clamped`
    says the limit bit): two or three noisy optima can fit a steep drift that no grid should
    follow blindly, while one spacing is as far as a grid can move and still hold the old
    optimum inside it.
    """

    name: str
    previous: float
    predicted: float
    centre: float
    clamped: bool


def drift_centres(
    axes: Sequence[Axis], levels: Sequence[LevelResult], width: int, spacings: Mapping[str, float]
) -> dict[str, DriftCentre]:
    """The next level's centre per axis from x*(n) = x_inf - alpha/n fitted over `levels`; an
    axis whose fit is impossible (fewer than two levels) or not finite is left out, and the
    caller then centres it on the previous optimum."""
    if len(levels) < 2:
        return {}
    centres: dict[str, DriftCentre] = {}
    for axis in axes:
        fit = drift_fits([axis], levels)[axis.name]
        if isinstance(fit, str):
            continue
        value = fit.predict(width).value
        if not math.isfinite(value) or (axis.scale == "log" and value <= 0):
            continue
        predicted = math.log(value) if axis.scale == "log" else value
        previous = axis.to_scale(levels[-1].optimum.point[axis.name])
        limit = spacings[axis.name]
        centre = min(max(predicted, previous - limit), previous + limit)
        centres[axis.name] = DriftCentre(axis.name, previous, predicted, centre, centre != predicted)
    return centres
