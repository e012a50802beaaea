"""Algorithm 1 of arXiv 2505.02222 (the telescoping sweep), as pure functions over numbers.

Every axis lives in a *scale space*: u = ln(x) on a log axis, u = x on a linear one. Grids are
evenly spaced there, and "halve the spacing" and "fit a quadratic" both happen there.

The rule, for k swept axes and widths N0, 2 N0, ..., Nc:

  level 0    the full grid at N0: `Axis.points` per axis from `low` to `high` inclusive. If the
             optimum lands on an edge of the grid, the grid grows one ring of points that way
             (up to `max_widenings` times) and the optimum is found again: an optimum on an edge
             is not an optimum.
  level l+1  the width doubles, so each trial costs ~4x. Points per axis shrink by 4^(-1/k)
             (`next_count`), so the trial count falls ~4x and each level costs about the same;
             the spacing halves, matching the O(1/n) drift of the optimum; the grid is centred
             on level l's optimum (`centre = "previous"`, the paper's rule), or, once two levels
             are finished, on the drift model's prediction for the new width (x*(n) = x_inf -
             alpha/n, or a power of n where 3+ levels say so; `centre = "drift"`): the predicted move from level l's optimum, shrunk by its
             uncertainty so that a drift the levels have not measured moves nothing, and at most
             one new spacing (telescope.core.drift.drift_centres). A drift
             larger than the narrowed grid still lands the optimum on an edge; the grid then grows
             rings as level 0's does (up to `max_shifts` per level), so every level brackets its
             optimum where the budget allows, and says whether it did (`LevelResult.bracketed`).

Non-grid (sampler) levels: their observations lie off the grid, so the optimum is the best sample
(`method = "sample"`), no edge is defined and no ring is added; such a level counts as bracketed.

`telescoping_steps()` is that loop written as a generator: it yields the points to run and is sent the
losses observed, so the Ray controller and the pure `simulate()` drive one implementation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from telescope.core.drift import DriftCentre, drift_centres
from telescope.core.numbers import format_point, round_sig
from telescope.errors import ConfigError, NoOptimumError

Scale = Literal["log", "linear"]
Edge = Literal["low", "high"]
Method = Literal["quadratic", "parabola", "grid", "sample"]
SCALES = ("log", "linear")
_ON_GRID = 1e-6  # an observation within this many spacings of a grid point is that point


def _real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Axis:
    """One swept hyperparameter: a TrialConfig field, its base-level range and point count.

    `bounds` is the field's valid range (closed, real space). Narrowed and widened grids may
    leave [low, high], which only describes the base grid, but never leave `bounds`.
    """

    name: str
    low: float
    high: float
    scale: Scale = "log"
    points: int = 5
    bounds: tuple[float, float] = (-math.inf, math.inf)

    def __post_init__(self) -> None:
        path = f"axes.{self.name}"
        if self.scale not in SCALES:
            raise ConfigError(f"{path}.scale", f'must be "log" or "linear"; got {self.scale!r}')
        for end in ("low", "high"):
            if not _real(getattr(self, end)):
                raise ConfigError(f"{path}.{end}", f"must be a finite number; got {getattr(self, end)!r}")
        if not self.low < self.high:
            raise ConfigError(
                f"{path}.low",
                f"must be below high ({self.high!r}); got {self.low!r}: swap them or widen the range",
            )
        if self.scale == "log" and self.low <= 0:
            raise ConfigError(
                f"{path}.low",
                f'must be > 0 on a log scale; got {self.low!r}: raise it or use scale = "linear"',
            )
        lo, hi = self.bounds
        if self.low < lo:
            raise ConfigError(
                f"{path}.low", f"must be >= {lo:g}, the lowest valid {self.name}; got {self.low!r}"
            )
        if self.high > hi:
            raise ConfigError(
                f"{path}.high", f"must be <= {hi:g}, the highest valid {self.name}; got {self.high!r}"
            )
        if not isinstance(self.points, int) or isinstance(self.points, bool) or self.points < 1:
            raise ConfigError(
                f"{path}.points",
                f"must be a whole number >= 1 (points at the base width, e.g. 5); got {self.points!r}",
            )

    def to_scale(self, x: float) -> float:
        return math.log(x) if self.scale == "log" else float(x)

    def from_scale(self, u: float) -> float:
        return round_sig(math.exp(u) if self.scale == "log" else u)

    def scale_bounds(self) -> tuple[float, float]:
        lo, hi = self.bounds
        if self.scale == "linear":
            return float(lo), float(hi)
        return (math.log(lo) if lo > 0 else -math.inf), (math.log(hi) if hi < math.inf else math.inf)


@dataclass(frozen=True)
class AxisGrid:
    """One axis of a level's grid: point j sits at u = centre + (start + j) * spacing.

    `start` is the first point's offset from the centre in spacings (-2 for 5 points, -3.5 for
    8). Widening only moves `start` and grows `count`, so old points keep their exact values.
    `rings` counts points added by widening; narrowing ignores them (they extend the range, not
    the resolution).
    """

    axis: Axis
    centre: float
    spacing: float
    start: float
    count: int
    rings: int = 0

    def u(self, j: float) -> float:
        return self.centre + (self.start + j) * self.spacing

    def at(self, j: float) -> float:
        """The real value at index j (fractional for a refined optimum), inside the valid range."""
        lo, hi = self.axis.scale_bounds()
        u = min(max(self.u(j), lo), hi)
        if self.axis.scale == "linear" and abs(u) < 1e-9 * self.spacing:
            u = 0.0  # a point meant to be 0 (e.g. no weight decay), not float dust around it
        return self.axis.from_scale(u)

    def values(self) -> tuple[float, ...]:
        return tuple(self.at(j) for j in range(self.count))

    def index(self, x: float) -> int | None:
        if not _real(x) or (self.axis.scale == "log" and x <= 0):
            return None
        r = (self.axis.to_scale(x) - self.centre) / self.spacing - self.start
        j = round(r)
        return j if 0 <= j < self.count and abs(r - j) < _ON_GRID else None


@dataclass(frozen=True)
class LevelGrid:
    """The grid of one level: the cartesian product of its axes' points at one width."""

    level: int
    width: int
    axes: tuple[AxisGrid, ...]
    widened: int = 0  # widening rings added at this level

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.axis.name for g in self.axes)

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(g.count for g in self.axes)

    @property
    def shape(self) -> str:
        return "x".join(str(c) for c in self.counts)

    @property
    def n_points(self) -> int:
        return math.prod(self.counts)

    def axis(self, name: str) -> AxisGrid:
        for g in self.axes:
            if g.axis.name == name:
                return g
        raise KeyError(f"no axis {name!r} in this grid (axes: {', '.join(self.names)})")

    def centre(self, name: str) -> float:
        return self.axis(name).centre

    def spacing(self, name: str) -> float:
        return self.axis(name).spacing

    def count(self, name: str) -> int:
        return self.axis(name).count

    def axis_values(self, name: str) -> tuple[float, ...]:
        return self.axis(name).values()

    def points(self) -> list[dict[str, float]]:
        """All points, in lexicographic order of their grid indices (first axis slowest)."""
        return [dict(zip(self.names, combo)) for combo in itertools.product(*(g.values() for g in self.axes))]

    def point_at(self, index: Sequence[int]) -> dict[str, float]:
        return {g.axis.name: g.at(j) for g, j in zip(self.axes, index)}

    def index_of(self, point: Mapping[str, float]) -> tuple[int, ...] | None:
        missing = [n for n in self.names if n not in point]
        if missing:
            raise ValueError(f"point {dict(point)} has no value for axis {', '.join(missing)}")
        index = tuple(g.index(point[g.axis.name]) for g in self.axes)
        return None if None in index else index  # type: ignore[return-value]

    def box(self) -> dict[str, tuple[float, float]]:
        """Per axis, the [lowest, highest] point in real space: where a sampler may search."""
        return {g.axis.name: (g.at(0), g.at(g.count - 1)) for g in self.axes}


def base_grid(axes: Sequence[Axis], width: int) -> LevelGrid:
    """Level 0: `points` evenly spaced in scale space from low to high inclusive (one point: the
    midpoint, with the whole range as its spacing so narrowing still has a scale to halve)."""
    names = [a.name for a in axes]
    if not axes:
        raise ConfigError("axes", "at least one axis is needed, e.g. [axes.lr]")
    if len(set(names)) != len(names):
        raise ConfigError("axes", f"each axis may appear once; got {', '.join(names)}")
    grids = []
    for a in axes:
        lo, hi = a.to_scale(a.low), a.to_scale(a.high)
        spacing = (hi - lo) / (a.points - 1) if a.points > 1 else hi - lo
        grids.append(AxisGrid(a, (lo + hi) / 2, spacing, -(a.points - 1) / 2, a.points))
    return LevelGrid(0, width, tuple(grids))


def next_count(n: int, k: int, min_points: int = 1) -> int:
    """Points per axis at the next level: n * 4^(-1/k) rounded to the nearest odd number (ties
    up), so the grid keeps a point on the previous optimum; at least max(1, min_points), and
    never more than n.

    k=2 (trials fall 4x, cost per level flat): 8 -> 5 -> 3 -> 1, the paper's schedule, and
    8 -> 5 -> 3 -> 3 with min_points=3. k=1 (points fall 4x): 9 -> 3 -> 1, 17 -> 5 -> 1.
    k=3 (x0.63): 8 -> 5 -> 3 -> 1, 12 -> 7 -> 5 -> 3 -> 1.
    """
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 and k >= 1; got n={n}, k={k}")
    x = n * 4.0 ** (-1.0 / k)
    odd = 2 * math.floor((x - 1) / 2 + 0.5 + 1e-9) + 1  # the 1e-9 makes exact ties round up
    return min(n, max(odd, min_points, 1))


def count_schedule(points: Sequence[int], n_levels: int, min_points: int = 1) -> list[tuple[int, ...]]:
    """Points per axis at every level, before any widening: what `plan` prices."""
    schedule = [tuple(points)]
    for _ in range(n_levels - 1):
        schedule.append(tuple(next_count(n, len(points), min_points) for n in schedule[-1]))
    return schedule


def _inside(g: AxisGrid) -> AxisGrid:
    """Shift a grid along its axis until every point is a valid value (e.g. weight decay >= 0)."""
    lo, hi = g.axis.scale_bounds()
    first, last = g.u(0), g.u(g.count - 1)
    if first < lo:
        return replace(g, centre=g.centre + (lo - first))
    if last > hi:
        return replace(g, centre=g.centre + (hi - last))
    return g


def narrow(
    prev: LevelGrid, optimum: Mapping[str, float], k: int | None = None, min_points: int = 1,
    centres: Mapping[str, float] | None = None,
) -> LevelGrid:
    """The next level: width doubled, `next_count` points per axis, spacing halved, centred on
    the previous optimum in scale space (or on `centres[axis]`, a scale-space centre chosen by
    the caller, e.g. `drift_centres`).

    The new grid may leave the axis's declared [low, high]: that range describes the base grid
    only, and the optimum may already sit beyond it after widening. It never leaves the axis's
    `bounds`; a grid that would is shifted inside, so it then brackets the optimum off-centre.
    """
    k = len(prev.axes) if k is None else k
    grids = []
    for g in prev.axes:
        n = next_count(g.count - g.rings, k, min_points)
        centre = (centres or {}).get(g.axis.name, g.axis.to_scale(optimum[g.axis.name]))
        grids.append(_inside(AxisGrid(g.axis, centre, g.spacing / 2, -(n - 1) / 2, n)))
    return LevelGrid(prev.level + 1, prev.width * 2, tuple(grids))


def widen(grid: LevelGrid, on_edge: Mapping[str, Edge | None]) -> LevelGrid:
    """The same level with one more point (same spacing) beyond each edge in `on_edge`.

    Old points keep bit-identical values, so their results are reused. An edge at the axis's
    valid bound (e.g. weight decay 0) cannot grow; if no edge can, `grid` itself is returned.
    """
    grids, grew = [], False
    for g in grid.axes:
        edge = on_edge.get(g.axis.name)
        if edge is not None and _can_grow(g, edge):
            start = g.start - 1 if edge == "low" else g.start
            g, grew = replace(g, start=start, count=g.count + 1, rings=g.rings + 1), True
        grids.append(g)
    return replace(grid, axes=tuple(grids), widened=grid.widened + 1) if grew else grid


def _can_grow(g: AxisGrid, edge: Edge) -> bool:
    lo, hi = g.axis.scale_bounds()
    slack = 1e-9 * g.spacing
    return g.u(-1) >= lo - slack if edge == "low" else g.u(g.count) <= hi + slack


def added_points(old: LevelGrid, new: LevelGrid) -> list[dict[str, float]]:
    """Points of `new` that `old` does not have (the ring a widening added)."""
    return [p for p in new.points() if old.index_of(p) is None]


@dataclass(frozen=True)
class Observation:
    """One finished trial: its point, seed and final loss (NaN or inf if diverged or failed)."""

    point: Mapping[str, float]
    seed: int
    loss: float


@dataclass(frozen=True)
class Optimum:
    """The best point of one level.

    `grid_point` is the grid point with the lowest mean final loss over seeds (`loss`, from
    `n_seeds` seeds); `point` refines it by a local quadratic fit (`method`): "quadratic" (full
    fit over the 3^k neighbourhood), "parabola" (per-axis 1-D fits), "grid" (no refinement
    possible), or "sample" (observations off the grid, from a non-grid sampler: the best one).
    `clamped`: the fit's minimiser lay beyond one spacing of `grid_point` and was pulled back.
    `on_edge[axis]`: "low"/"high" when `grid_point` is on that edge of a grid with > 1 point.
    """

    point: Mapping[str, float]
    grid_point: Mapping[str, float]
    loss: float
    n_seeds: int
    method: Method
    clamped: bool
    on_edge: Mapping[str, Edge | None]

    @property
    def refined(self) -> bool:
        return self.method in ("quadratic", "parabola")


def _mean_losses(
    keys: Sequence[tuple], observations: Sequence[Observation]
) -> dict[tuple, tuple[float, int]]:
    """Mean final loss over seeds per point; one non-finite seed makes the point infinitely bad,
    so a diverging setting never wins on the strength of its lucky seeds."""
    groups: dict[tuple, list[float]] = {}
    for key, obs in zip(keys, observations):
        groups.setdefault(key, []).append(float(obs.loss))
    return {
        key: (sum(ls) / len(ls) if all(math.isfinite(v) for v in ls) else math.inf, len(ls))
        for key, ls in groups.items()
    }


def find_optimum(grid: LevelGrid, observations: Iterable[Observation]) -> Optimum:
    """The level's optimum: the best mean loss over seeds, refined by a local quadratic fit in
    scale space where the neighbourhood allows (see `Optimum`)."""
    obs = list(observations)
    if not obs:
        raise ValueError(f"no observations for level {grid.level} (width {grid.width})")
    indices = [grid.index_of(o.point) for o in obs]
    if any(i is None for i in indices):
        keys = [tuple(float(o.point[n]) for n in grid.names) for o in obs]
        (best, (loss, n)) = _best(grid, _mean_losses(keys, obs))
        point = dict(zip(grid.names, best))
        return Optimum(point, point, loss, n, "sample", False, {name: None for name in grid.names})
    means = _mean_losses(indices, obs)  # type: ignore[arg-type]
    best, (loss, n) = _best(grid, means)
    z, method, clamped = _refine(grid, best, {key: m for key, (m, _) in means.items()})
    point = {g.axis.name: g.at(j + zi) for g, j, zi in zip(grid.axes, best, z)}
    on_edge = {
        g.axis.name: None if g.count == 1 else "low" if j == 0 else "high" if j == g.count - 1 else None
        for g, j in zip(grid.axes, best)
    }
    return Optimum(point, grid.point_at(best), loss, n, method, clamped, on_edge)


def _best(grid: LevelGrid, means: dict[tuple, tuple[float, int]]) -> tuple[tuple, tuple[float, int]]:
    best = min(means.items(), key=lambda kv: (kv[1][0], kv[0]))  # ties: first in points() order
    if not math.isfinite(best[1][0]):
        raise NoOptimumError(grid.level, grid.width)
    return best


def _refine(
    grid: LevelGrid, best: tuple[int, ...], means: Mapping[tuple, float]
) -> tuple[tuple[float, ...], Method, bool]:
    """Offsets z (in spacings, per axis) from the best grid point to the fitted minimum."""
    k = len(best)

    def loss(offset: Sequence[int]) -> float:  # a missing or out-of-grid neighbour is unusable
        return means.get(tuple(b + o for b, o in zip(best, offset)), math.inf)

    if all(0 < j < g.count - 1 for j, g in zip(best, grid.axes)):
        offsets = list(itertools.product((-1, 0, 1), repeat=k))
        ys = [loss(o) for o in offsets]
        if all(math.isfinite(y) for y in ys):
            z = _quadratic_minimiser(np.array(offsets, dtype=float), np.array(ys))
            if z is not None:
                clipped = np.clip(z, -1.0, 1.0)
                return tuple(float(v) for v in clipped), "quadratic", bool((clipped != z).any())
    z_axis = [0.0] * k
    for i in range(k):
        step = [0] * k
        step[i] = 1
        lo, mid, hi = loss([-s for s in step]), loss([0] * k), loss(step)
        curvature = lo + hi - 2 * mid
        if math.isfinite(lo) and math.isfinite(hi) and curvature > 0:
            # the vertex of a convex parabola whose middle point is lowest lies within half a spacing
            z_axis[i] = (lo - hi) / (2 * curvature)
    refined = any(z_axis)
    return tuple(z_axis), ("parabola" if refined else "grid"), False


def quadratic_pairs(k: int) -> list[tuple[int, int]]:
    """The (i, j), i <= j, of a full quadratic's second-order terms in k variables, in the column
    order of `quadratic_design`."""
    return [(i, j) for i in range(k) for j in range(i, k)]


def quadratic_design(x: np.ndarray) -> np.ndarray:
    """The design matrix of y = c + g.x + x^T H x / 2 at the rows of x (n, k): columns 1, x_i, then
    x_i x_j for `quadratic_pairs(k)`; 1 + k + k(k+1)/2 columns."""
    k = x.shape[1]
    return np.column_stack([np.ones(len(x)), x] + [x[:, i] * x[:, j] for i, j in quadratic_pairs(k)])


def _quadratic_minimiser(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Least-squares fit of y = c + g.x + x^T H x / 2 (all 1 + k + k(k+1)/2 terms); the minimiser
    -H^-1 g when H is positive definite, else None."""
    k = x.shape[1]
    pairs = quadratic_pairs(k)
    design = quadratic_design(x)
    coef = np.linalg.lstsq(design, y - y.mean(), rcond=None)[0]
    hessian = np.zeros((k, k))
    for c, (i, j) in zip(coef[1 + k :], pairs):
        hessian[i, j] = hessian[j, i] = 2 * c if i == j else c
    eig = np.linalg.eigvalsh(hessian)
    if not eig.min() > 1e-9 * np.abs(eig).max():
        return None
    return np.linalg.solve(hessian, -coef[1 : 1 + k])


def describe_widening(old: LevelGrid, new: LevelGrid, optimum: Optimum) -> str:
    """One sentence for the log, e.g. "lr optimum 0.0316 on the high edge of the base grid:
    widening to 0.0562"."""
    where = "the base grid" if old.level == 0 else f"the level-{old.level} grid"
    parts = []
    for g_old, g_new in zip(old.axes, new.axes):
        name, edge = g_old.axis.name, optimum.on_edge.get(g_old.axis.name)
        if edge is None:
            continue
        head = f"{name} optimum {optimum.grid_point[name]:.3g} on the {edge} edge of {where}"
        head += f" (width {old.width})"
        if g_new.count > g_old.count:
            added = g_new.at(0) if edge == "low" else g_new.at(g_new.count - 1)
            parts.append(f"{head}: {'widening' if old.level == 0 else 'adding a ring'} to {added:.3g}")
        else:
            bound = g_old.axis.bounds[0 if edge == "low" else 1]
            parts.append(f"{head}: kept, {bound:g} is the end of {name}'s valid range")
    return "; ".join(parts)


def level_widths(base_width: int, calibration_width: int) -> list[int]:
    """The widths of the levels: base_width doubling up to calibration_width."""
    for name, w in (("base_width", base_width), ("calibration_width", calibration_width)):
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise ConfigError(name, f"must be a positive whole number; got {w!r}")
    ratio = calibration_width // base_width
    if calibration_width % base_width or ratio & (ratio - 1):
        doublings = ", ".join(str(base_width << i) for i in range(1, 4))
        raise ConfigError(
            "calibration_width",
            f"must be base_width ({base_width}) doubled zero or more times ({base_width}, {doublings}, ...); "
            f"got {calibration_width}",
        )
    return [base_width << i for i in range(ratio.bit_length())]


# ---- the loop ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Work for the driver: run `points` (every seed) at `width`, then send back their
    observations. A non-grid sampler may instead run len(points) trials inside `grid.box()`;
    `find_optimum` then takes the best sample."""

    level: int
    width: int
    grid: LevelGrid
    points: tuple[dict[str, float], ...]
    note: str
    completed: tuple["LevelResult", ...] = ()  # the levels finished before this step


@dataclass(frozen=True)
class LevelResult:
    level: int
    width: int
    grid: LevelGrid  # after any widening
    observations: tuple[Observation, ...]
    optimum: Optimum
    notes: tuple[str, ...]

    @property
    def unbracketed(self) -> dict[str, Edge]:
        """Axis -> the edge its optimum still sits on, for edges that could have grown."""
        return _unbracketed(self.grid, self.optimum)

    @property
    def bracketed(self) -> bool:
        """The optimum is interior on every axis that could grow: a true local optimum of the
        level's grid, not the end of where it looked. A sampler level (best sample) counts as
        bracketed: it has no edges to grow."""
        return not self.unbracketed


@dataclass(frozen=True)
class TelescopeResult:
    levels: tuple[LevelResult, ...]

    @property
    def optimum(self) -> Optimum:
        """The optimum at the calibration width: what transfers to the target width."""
        return self.levels[-1].optimum

    @property
    def log(self) -> tuple[str, ...]:
        return tuple(note for level in self.levels for note in level.notes)



Centre = Literal["drift", "previous"]
CENTRES = ("drift", "previous")


def telescoping_steps(
    axes: Sequence[Axis], widths: Sequence[int], *, min_points: int = 1, max_widenings: int = 2,
    max_shifts: int = 2, centre: Centre = "drift",
) -> Generator[Step, Sequence[Observation], TelescopeResult]:
    """Algorithm 1 as a coroutine. Drive it with `step = next(gen)`, then repeatedly
    `step = gen.send(observations_of_step)`; the StopIteration carries the TelescopeResult.

    An optimum on an edge that can grow adds a ring on that side: up to `max_widenings` rings at
    level 0, `max_shifts` at every later level. Each ring is one more Step of the same level
    whose points are only the new ones. `centre = "previous"` with `max_shifts = 0` is the
    paper's rule exactly."""
    if centre not in CENTRES:
        raise ConfigError("centre", f'must be "drift" or "previous"; got {centre!r}')
    for a, b in zip(widths, widths[1:]):
        if b != 2 * a:
            raise ValueError(f"widths must double level to level; got {list(widths)}")
    results: list[LevelResult] = []
    grid = base_grid(axes, widths[0])
    for level in range(len(widths)):
        if level == 0:
            ranges = ", ".join(
                f"{g.axis.name} {g.at(0):.3g}..{g.at(g.count - 1):.3g}" for g in grid.axes
            )
            note = f"level 0: {grid.shape} base grid at width {grid.width} over {ranges}"
        else:
            previous = results[-1].optimum.point
            drifted = {}
            if centre == "drift":
                spacings = {g.axis.name: g.spacing / 2 for g in grid.axes}
                drifted = drift_centres(axes, results, grid.width * 2, spacings)
            grid = narrow(grid, previous, len(axes), min_points, {n: d.centre for n, d in drifted.items()})
            note = f"level {level}: {grid.shape} grid at width {grid.width}, spacing halved, centred on "
            if any(d.moved for d in drifted.values()):
                moved = {n: grid.axis(n).axis.from_scale(d.centre) for n, d in drifted.items()}
                clamped = [n for n, d in drifted.items() if d.clamped]
                laws = " / ".join(sorted({d.law for d in drifted.values()}))
                note += (f"{format_point(moved)}, where the drift {laws} heads "
                         f"(previous optimum {format_point(previous)}"
                         + (f"; {', '.join(clamped)} held to one spacing from it" if clamped else "") + ")")
            else:
                note += format_point(previous)
                if drifted:
                    note += "; " + _unmeasured(drifted.values())
        notes = [note]
        observations = list((yield Step(level, grid.width, grid, tuple(grid.points()), note, tuple(results))))
        optimum = find_optimum(grid, observations)
        rings, max_rings = 0, max_widenings if level == 0 else max_shifts
        while rings < max_rings and _unbracketed(grid, optimum):
            wider = widen(grid, optimum.on_edge)
            new = added_points(grid, wider)
            if not new:
                break
            notes.append(describe_widening(grid, wider, optimum))
            observations += (yield Step(level, grid.width, wider, tuple(new), notes[-1], tuple(results)))
            grid, rings = wider, rings + 1
            optimum = find_optimum(grid, observations)
        for name, edge in _unbracketed(grid, optimum).items():
            notes.append(
                f"level {level}: {name} optimum {optimum.grid_point[name]:.3g} is still on the {edge} edge "
                f"of the grid after {rings} ring{'s' if rings != 1 else ''}: not bracketed, the true optimum "
                f"may lie beyond it; {bracket_fix(level, name, edge, max_rings, centre)}"
            )
        notes.append(
            f"level {level}: optimum {format_point(optimum.point)} (loss {optimum.loss:.4g}, {optimum.method})"
        )
        results.append(LevelResult(level, grid.width, grid, tuple(observations), optimum, tuple(notes)))
    return TelescopeResult(tuple(results))


def _unmeasured(centres: Iterable[DriftCentre]) -> str:
    """Why drift centring stayed put, e.g. "the drift fitted so far moves lr by +0.17 +- 0.32 (scale
    space) to this width: within its uncertainty, so the grid stays on the previous optimum"."""
    def shown(step: float, stderr: float) -> float:  # float dust from an exact fit reads as no move
        return 0.0 if abs(step) < 1e-9 * stderr else step

    steps = ", ".join(f"{d.name} by {shown(d.step, d.step_stderr):+.2g} +- {d.step_stderr:.2g}" for d in centres)
    return (f"the drift fitted so far moves {steps} (scale space) to this width: within its uncertainty, "
            f"so the grid stays on the previous optimum")


def _unbracketed(grid: LevelGrid, optimum: Optimum) -> dict[str, Edge]:
    """The axes whose optimum sits on an edge that could grow (an edge at the axis's valid bound
    cannot, and an optimum there is as good as the range allows)."""
    return {
        g.axis.name: edge
        for g in grid.axes
        if (edge := optimum.on_edge.get(g.axis.name)) is not None and _can_grow(g, edge)
    }


def bracket_fix(level: int, name: str, edge: Edge, max_rings: int, centre: Centre) -> str:
    """What does bracket the optimum: more rings, and at level 0 a wider base range. Extending the
    base range cannot help a later level, whose grid follows the optimum, not [low, high]."""
    if level == 0:
        return f"run the sweep again with axes.{name}.{edge} further out or a larger max_widenings (now {max_rings})"
    fix = f"run the sweep again with a larger max_shifts (now {max_rings})"
    return fix + (' or centre = "drift"' if centre == "previous" else "")


def simulate(
    axes: Sequence[Axis],
    widths: Sequence[int],
    loss_fn: Callable[[Mapping[str, float], int, int], float],
    seeds: int | Sequence[int] = 1,
    *,
    min_points: int = 1,
    max_widenings: int = 2,
    max_shifts: int = 2,
    centre: Centre = "drift",
) -> TelescopeResult:
    """Run the rule against a Python loss function loss_fn(point, width, seed), no Ray."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    gen = telescoping_steps(axes, widths, min_points=min_points, max_widenings=max_widenings,
                            max_shifts=max_shifts, centre=centre)
    step = next(gen)
    while True:
        observations = [
            Observation(p, s, float(loss_fn(p, step.width, s))) for p in step.points for s in seed_list
        ]
        try:
            step = gen.send(observations)
        except StopIteration as done:
            return done.value
