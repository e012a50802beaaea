"""The figures of a sweep report, drawn on matplotlib Figure objects (no pyplot: no global
backend state, nothing to close, safe inside a notebook) and saved as PNG."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

from telescope.core.drift import optimum_sigma
from telescope.core.fits import DriftFit, PowerLawFit
from telescope.core.noise import band, clip, drift_sigmas
from telescope.core.numbers import format_uncertain
from telescope.state import SweepState
from telescope.read.report.numbers import (
    PAPER_FINAL_SHARE, PAPER_LOSS_ALPHA, LevelSummary, ReportData, level_grid,
)
from telescope.spec.sweep import SweepSpec
from telescope.core.rule import Axis, AxisGrid, LevelGrid, LevelResult, Optimum

_MAX_TRANSFER_PANELS = 7  # the profile plus up to six slices: more would be unreadable
_MAX_ANNOTATED_CELLS = 100  # grids up to 10x10 get their loss written in each cell
_STAR_PT = 14  # the optimum's star, in points: its cell's number is written clear of it
_STATUS_MARKS = {"diverged": ("x", "tab:red"), "failed": ("s", "black")}


def _level_colours(n: int) -> list[Any]:
    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


def _set_scale(ax: Any, axis_scale: str, which: str = "x") -> None:
    if axis_scale == "log":
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def transfer_axis(spec: SweepSpec) -> str:
    """The axis the muTransfer picture puts on x: the learning rate when it is swept."""
    return "lr" if "lr" in spec.axis_names else spec.axis_names[0]


def _transfer_panels(spec: SweepSpec, state: SweepState, points: pd.DataFrame,
                     x: str) -> list[tuple[str, pd.DataFrame]]:
    """The muTransfer picture's panels: first the profile (best over the other axes), then one
    slice per value of the other axes. Narrowed grids put each level's values elsewhere, so a
    slice takes, per level, the one exact combination of the other axes nearest a base-grid value
    (within half a base spacing): a curve joins only points that differ in `x` alone."""
    others = [a for a in spec.axis_names if a != x]
    if not others:
        return [(f"loss vs {x}", points)]
    panels = [(f"best over {', '.join(others)}", points)]
    base = level_grid(state, 0)
    if base is None:
        return panels
    grids = [base.axis(name) for name in others]
    keys = [tuple(_nearest_index(g, v) for g, v in zip(grids, row))
            for row in points[others].itertuples(index=False)]
    slices = []
    for key, rows in points.groupby(pd.Series(keys, index=points.index), sort=True):
        target = [g.axis.to_scale(g.at(j)) / g.spacing for g, j in zip(grids, key)]
        kept = [_nearest_combination(at, others, grids, target) for _, at in rows.groupby("level")]
        exact = pd.concat(kept)
        if exact.groupby("level")[x].nunique().max() >= 2:  # a curve needs two points
            title = ", ".join(f"{g.axis.name} ≈ {g.at(j):.3g}" for g, j in zip(grids, key))
            slices.append((len(exact), key, title, exact))
    fullest = sorted(slices, key=lambda s: -s[0])[: _MAX_TRANSFER_PANELS - 1]
    return panels + [(title, rows) for _, _, title, rows in sorted(fullest, key=lambda s: s[1])]


def _nearest_combination(rows: pd.DataFrame, others: Sequence[str], grids: Sequence[AxisGrid],
                         target: Sequence[float]) -> pd.DataFrame:
    """The rows of one exact combination of the other axes: the one nearest `target` (in base
    spacings), the fullest on a tie."""
    combos = [tuple(float(v) for v in r) for r in rows[list(others)].itertuples(index=False)]
    counts = Counter(combos)

    def distance(combo: tuple[float, ...]) -> tuple[float, int, tuple[float, ...]]:
        d = sum((g.axis.to_scale(v) / g.spacing - t) ** 2 for g, v, t in zip(grids, combo, target))
        return d, -counts[combo], combo

    best = min(counts, key=distance)
    return rows[[c == best for c in combos]]


def _nearest_index(g: AxisGrid, value: float) -> int:
    return round((g.axis.to_scale(value) - g.centre) / g.spacing - g.start)


def plot_transfer(spec: SweepSpec, state: SweepState, points: pd.DataFrame, path: Path) -> Path:
    """Loss vs learning rate (or the first axis), one curve per width: the muTransfer picture."""
    return _save(draw_transfer(spec, state, points), path)


def draw_transfer(spec: SweepSpec, state: SweepState, points: pd.DataFrame) -> Figure:
    """`plot_transfer`'s figure. A sampler level's points are drawn as markers alone: its samples
    differ in every axis, so no line may join them as if they were a slice."""
    x = transfer_axis(spec)
    scale = next(a.scale for a in spec.axes if a.name == x)
    panels = _transfer_panels(spec, state, points, x)
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    levels = sorted(points["level"].unique())
    colours = dict(zip(levels, _level_colours(len(levels))))
    for i, (title, subset) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for level, at in subset.groupby("level"):
            partial = level >= len(state.levels)
            profile = at.groupby(x)["loss"].min()  # best over the other axes within the panel
            label = f"width {int(at['width'].iloc[0])}" + (" (partial)" if partial else "")
            sampled = not spec.sampler(int(level)).fixed_points
            if i > 0:
                label += " at " + ", ".join(f"{n}={float(at[n].iloc[0]):.3g}" for n in spec.axis_names if n != x)
            _curve(ax, profile, colours[level], label + (" (samples)" if sampled else ""), dashed=partial,
                   line=not sampled)
            if i == 0 and not partial:
                _mark_optimum(ax, state.levels[level].optimum, x, colours[level])
        _set_scale(ax, scale)
        ax.set_xlabel(x)
        ax.set_ylabel("final val loss (mean over seeds)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{spec.name}: loss vs {x} per width (stars: each level's optimum; x: diverged/failed)")
    return fig


def _curve(ax: Any, profile: pd.Series, colour: Any, label: str, *, dashed: bool, line: bool = True) -> None:
    finite = profile[np.isfinite(profile.to_numpy(dtype=float))]
    style = "o" + (("--" if dashed else "-") if line else "")
    ax.plot(finite.index, finite.to_numpy(), style, color=colour, label=label, ms=4)
    bad = profile.index[~np.isfinite(profile.to_numpy(dtype=float))]
    if len(bad):  # no loss to plot: a mark along the top edge says where the runs blew up
        top = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(bad, [0.97] * len(bad), "x", color=colour, transform=top, ms=6)


def _mark_optimum(ax: Any, optimum: Optimum, x: str, colour: Any) -> None:
    ax.plot([optimum.grid_point[x]], [optimum.loss], "*", color=colour, ms=13, mec="black", zorder=5)
    ax.axvline(optimum.point[x], color=colour, ls=":", lw=1)


def plot_level_grid(spec: SweepSpec, state: SweepState, points: pd.DataFrame, summary: LevelSummary,
                    pair: tuple[str, str | None], path: Path) -> Path:
    """One level's grid over two axes (the best over any others), with the optimum and the next
    level's box; diverged, failed and not-yet-run cells marked distinctly."""
    return _save(draw_level_grid(spec, state, points, summary, pair), path)


def draw_level_grid(spec: SweepSpec, state: SweepState, points: pd.DataFrame, summary: LevelSummary,
                    pair: tuple[str, str | None]) -> Figure:
    """`plot_level_grid`'s figure. A sampler level is drawn as what it is: its samples where they
    fell inside the level's search box. The colour bar states the level's seed noise."""
    level = summary.level
    at = points[points["level"] == level]
    grid = level_grid(state, level)
    a, b = pair
    fig = Figure(figsize=(6.2, 5.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    scales = {axis.name: axis.scale for axis in spec.axes}
    _set_scale(ax, scales[a])  # before drawing: a scale change resets the grid's own ticks
    if b is not None:
        _set_scale(ax, scales[b], "y")
        ax.set_ylabel(b)
    else:
        ax.set_yticks([])
    ax.set_xlabel(a)
    opt = state.levels[level].optimum if level < len(state.levels) else None
    star = (opt.point[a], opt.point[b] if b else 0.5) if opt else None
    label = _loss_label(summary)
    on_grid = (not summary.samples and grid is not None
               and all(grid.index_of(p) is not None for p in _point_dicts(at, spec.axis_names)))
    if on_grid:
        _grid_cells(fig, ax, grid, at, a, b, spec.axis_names, len(spec.seeds), label, star)
    else:  # a sampler's (or a stopped level's) points are not on a grid: plot them where they are
        _scatter_cells(fig, ax, at, a, b, label)
        if summary.samples and grid is not None:
            _draw_box(ax, grid, a, b, label=f"search box ({summary.shape})", colour="0.35", points=False)
    bracket = ""
    if opt is not None:
        bracket = "; bracketed" if state.levels[level].bracketed else "; NOT bracketed (on an edge)"
        ax.plot([star[0]], [star[1]], "*", color="white", mec="black", ms=_STAR_PT, zorder=6,
                label=f"optimum ({opt.method})")
    nxt = level_grid(state, level + 1)
    if nxt is not None:
        _draw_box(ax, nxt, a, b)
    keys = [Rectangle((0, 0), 1, 1, fc="none", ec="0.6", hatch="//", label="not run yet")] if on_grid else []
    keys += [Line2D([], [], marker=m, color=c, mfc="none", ls="", label=status)
             for status, (m, c) in _STATUS_MARKS.items()]
    ax.legend(handles=ax.get_legend_handles_labels()[0] + keys, fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncol=3)
    extra = [n for n in spec.axis_names if n not in pair]
    note = f"; best over {', '.join(extra)}" if extra else ""
    ax.set_title(f"level {level}: width {summary.width}, {summary.shape} ({summary.state}{bracket}){note}",
                 fontsize=10)
    return fig


def _loss_label(summary: LevelSummary) -> str:
    """The colour bar's label: what a cell's colour is, and how much of it is noise."""
    seeds = f"{summary.n_seeds} seed{'s' if summary.n_seeds != 1 else ''}"
    noise = summary.seed_noise.short() if summary.seed_noise else "no noise estimate yet"
    return f"final val loss (mean over {seeds}; {noise})"


def _point_dicts(rows: pd.DataFrame, axes: Sequence[str]) -> list[dict[str, float]]:
    return [dict(zip(axes, map(float, vals))) for vals in rows[list(axes)].itertuples(index=False)]


def _edges(g: AxisGrid) -> np.ndarray:
    """Cell edges half a spacing either side of each point, in real space."""
    u = np.array([g.u(j - 0.5) for j in range(g.count + 1)])
    return np.exp(u) if g.axis.scale == "log" else u


def _grid_cells(fig: Figure, ax: Any, grid: LevelGrid, at: pd.DataFrame, a: str, b: str | None,
                axes: Sequence[str], n_seeds: int, label: str, star: tuple[float, float] | None) -> None:
    ia, ib = grid.names.index(a), (grid.names.index(b) if b else None)
    shape = (grid.count(b) if b else 1, grid.count(a))
    loss = np.full(shape, np.nan)
    seeds = np.zeros(shape, dtype=int)
    status = np.full(shape, "", dtype=object)
    for point, row in zip(_point_dicts(at, axes), at.itertuples(index=False)):
        index = grid.index_of(point)
        cell = (index[ib] if ib is not None else 0, index[ia])
        if math.isfinite(row.loss) and not row.loss >= loss[cell]:  # best over the axes not shown
            loss[cell], seeds[cell] = row.loss, row.seeds
        elif not math.isfinite(row.loss) and not status[cell]:
            status[cell] = row.status
    xe = _edges(grid.axis(a))
    ye = _edges(grid.axis(b)) if b else np.array([0.0, 1.0])
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(loss), cmap="viridis_r", edgecolors="white", lw=0.5)
    # The next level's outer points fall on this grid's outer cell edges: a margin keeps its box
    # off the frame, which the mesh's sticky edges would otherwise forbid.
    mesh.sticky_edges.x.clear()
    mesh.sticky_edges.y.clear()
    ax.margins(0.03)
    fig.colorbar(mesh, ax=ax, label=label)
    xc, yc = _centres(xe, grid.axis(a)), (_centres(ye, grid.axis(b)) if b else np.array([0.5]))
    y_log = b is not None and grid.axis(b).axis.scale == "log"
    starred = _cell_of(star, xe, ye) if star else None
    finite = loss[np.isfinite(loss)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), value in np.ndenumerate(loss):
        if math.isfinite(value):
            if loss.size <= _MAX_ANNOTATED_CELLS:
                text = f"{value:.3f}" + (f"\n{seeds[r, c]}/{n_seeds} seeds" if seeds[r, c] < n_seeds else "")
                colour = "white" if value > mid else "black"
                if (r, c) == starred:  # just above or below the star, on the side of its cell with more room
                    # (the next level's box lies half a cell from the star, clear of a number this close)
                    below = _upper_half(star[1], ye[r], ye[r + 1], y_log)  # type: ignore[index]
                    offset = _STAR_PT / 2 + 2 + 0.6 * 7 * (text.count("\n") + 1)  # star, gap, half the text
                    ax.annotate(text, star, xytext=(0, -offset if below else offset),  # type: ignore[arg-type]
                                textcoords="offset points", ha="center", va="center", fontsize=7, color=colour)
                else:
                    ax.text(xc[c], yc[r], text, ha="center", va="center", fontsize=7, color=colour)
        elif status[r, c] in _STATUS_MARKS:
            marker, colour = _STATUS_MARKS[status[r, c]]
            ax.plot([xc[c]], [yc[r]], marker, color=colour, mfc="none", ms=11, mew=2)
        else:  # no trial of this cell is recorded yet
            ax.add_patch(Rectangle((xe[c], ye[r]), xe[c + 1] - xe[c], ye[r + 1] - ye[r], fill=False,
                                   hatch="//", ec="0.75", lw=0))
    _grid_ticks(ax.xaxis, grid.axis_values(a))
    if b:
        _grid_ticks(ax.yaxis, grid.axis_values(b))


def _cell_of(point: tuple[float, float], xe: np.ndarray, ye: np.ndarray) -> tuple[int, int] | None:
    """The (row, column) of the cell holding `point`, None outside the grid."""
    c, r = int(np.searchsorted(xe, point[0])) - 1, int(np.searchsorted(ye, point[1])) - 1
    return (r, c) if 0 <= c < len(xe) - 1 and 0 <= r < len(ye) - 1 else None


def _upper_half(y: float, lo: float, hi: float, log: bool) -> bool:
    """`y` sits in the upper half of the cell [lo, hi] (in the axis's scale)."""
    to = math.log if log else float
    return (to(y) - to(lo)) / (to(hi) - to(lo)) >= 0.5


def _grid_ticks(axis: Any, values: Sequence[float]) -> None:
    """Ticks on the grid's own values (a level's few points are what the reader looks up),
    written as the grid holds them: a weight decay of 0 reads 0, not the float dust of a
    midpoint between cell edges."""
    axis.set_major_locator(FixedLocator(list(values)))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FixedFormatter([f"{v:.3g}" for v in values]))


def _centres(edges: np.ndarray, g: AxisGrid | None) -> np.ndarray:
    if g is not None and g.axis.scale == "log":
        return np.sqrt(edges[:-1] * edges[1:])
    return (edges[:-1] + edges[1:]) / 2


def _scatter_cells(fig: Figure, ax: Any, at: pd.DataFrame, a: str, b: str | None, label: str) -> None:
    finite = at[np.isfinite(at["loss"].to_numpy(dtype=float))]
    ys = finite[b] if b else np.full(len(finite), 0.5)
    sc = ax.scatter(finite[a], ys, c=finite["loss"], cmap="viridis_r", s=60, edgecolors="black",
                    label="samples" if len(finite) else None)
    if len(finite):
        fig.colorbar(sc, ax=ax, label=label)
    for status, (marker, colour) in _STATUS_MARKS.items():
        bad = at[at["status"] == status]
        ax.plot(bad[a], bad[b] if b else np.full(len(bad), 0.5), marker, color=colour, mfc="none", ms=11, mew=2)


def _draw_box(ax: Any, grid: LevelGrid, a: str, b: str | None, *, label: str | None = None,
              colour: str = "tab:red", points: bool = True) -> None:
    """A level's box (the next level's grid, or a sampler level's own search box), with its points."""
    box = grid.box()
    (xa, xb), (ya, yb) = box[a], (box[b] if b else (0.15, 0.85))
    ax.add_patch(Rectangle((xa, ya), xb - xa, yb - ya, fill=False, ec=colour, ls="--", lw=1.8, zorder=5,
                           label=label or f"level {grid.level} grid (width {grid.width})"))
    if points:
        pts = grid.points()
        ax.plot([p[a] for p in pts], [p[b] if b else 0.5 for p in pts], ".", color=colour, ms=5, zorder=5)


def plot_drift(spec: SweepSpec, levels: Sequence[LevelResult], data: ReportData, path: Path) -> Path:
    """Each axis's optimum vs 1/width with the fitted drift law and its one-sigma band."""
    return _save(draw_drift(spec, levels, data), path)


def draw_drift(spec: SweepSpec, levels: Sequence[LevelResult], data: ReportData) -> Figure:
    """`plot_drift`'s figure. The fit is drawn solid over the widths it was fitted to; it is
    extended (dashed) to the target width only where it backs a prediction, else the target's
    point is the calibration optimum and the legend says why. Bands stay in each axis's valid range."""
    fig = Figure(figsize=(4.8 * len(spec.axes), 3.8), layout="constrained")
    inv = np.array([1.0 / lv.width for lv in levels])
    target = spec.target_width
    noises = [s.noise for s in data.levels if s.noise is not None]
    sigmas = drift_sigmas(levels, noises) if len(noises) == len(levels) else {}
    for i, axis in enumerate(spec.axes):
        ax = fig.add_subplot(1, len(spec.axes), i + 1)
        name = axis.name
        optima = np.array([float(lv.optimum.point[name]) for lv in levels])
        sigma = sigmas.get(name) or [optimum_sigma(lv, name) for lv in levels]
        bands = np.array([band(axis, x, s) for x, s in zip(optima, sigma)])
        ax.errorbar(inv, optima, yerr=[optima - bands[:, 0], bands[:, 1] - optima], fmt="o", color="black",
                    capsize=3, label="level optima (± their uncertainty)")
        for lv, xi, yi in zip(levels, inv, optima):
            ax.annotate(f"w{lv.width}", (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=7)
        fit, ex = data.drift[name], data.extrapolations.get(name)
        if isinstance(fit, DriftFit):
            predicts = ex is not None and ex.source == "drift"
            _drift_curve(ax, axis, fit, np.linspace(inv.min(), inv.max(), 50), "-",
                         f"fit: alpha = {format_uncertain(fit.alpha, fit.alpha_stderr)}"
                         + (" (exact interpolation)" if fit.dof == 0 else ""))
            if predicts:  # a power law grows without bound: drawn only as far as the target width
                end = 0.0 if fit.limit is not None else min(1.0 / target, inv.min())
                _drift_curve(ax, axis, fit, np.linspace(end, inv.min(), 50), "--", "extrapolated")
        else:
            ax.text(0.5, 0.5, f"no fit: {fit}", transform=ax.transAxes, ha="center", va="center",
                    fontsize=8, wrap=True)
        if ex is not None:
            e = ex.estimate
            why = "drift fit" if ex.source == "drift" else (
                "calibration optimum: " + ("exact interpolation" if ex.exact else "no drift measured"))
            ax.errorbar([1.0 / target], [e.value], yerr=[[e.value - e.band[0]], [e.band[1] - e.value]], fmt="D",
                        color="tab:orange", capsize=3, label=f"width {target}: {e.text()} ({why})")
        _set_scale(ax, axis.scale, "y")
        ax.set_xlim(left=0.0)
        ax.set_xlabel("1 / width")
        ax.set_ylabel(f"optimal {name}")
        law = fit.law if isinstance(fit, DriftFit) else "x*(n) = x_inf - alpha/n"
        ax.set_title(f"{law.replace('x*', name + '*')} ({'ln ' if axis.scale == 'log' else ''}scale)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: the points keep the frame
    return fig


def _drift_curve(ax: Any, axis: Axis, fit: DriftFit, inv: np.ndarray, style: str, label: str) -> None:
    preds = [fit.predict(1.0 / g if g > 0 else math.inf) for g in inv]
    values = [clip(axis, p.value) for p in preds]
    line = ax.plot(inv, values, style, color="tab:blue", label=label)[0]
    bands = np.array([band(axis, v, p.stderr) for v, p in zip(values, preds)])
    if np.all(np.isfinite(bands)) and style == "-":
        ax.fill_between(inv, bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.2, label="±1 sigma")
    elif np.all(np.isfinite(bands)):
        ax.fill_between(inv, bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.1)


def plot_loss_vs_width(data: ReportData, path: Path) -> Path:
    """Best loss per finished level vs width, with L = A n^-alpha + E when 3 widths allow it."""
    return _save(draw_loss_vs_width(data), path)


def draw_loss_vs_width(data: ReportData) -> Figure:
    """`plot_loss_vs_width`'s figure: each level's best loss with its seed spread. A fit with no
    degree of freedom left is drawn only between the widths it passes through, as the exact
    interpolation it is, and predicts nothing."""
    fig = Figure(figsize=(5.6, 4.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    done = [s for s in data.levels if s.state == "done"]
    spread = [s.best_loss_std or 0.0 for s in done]
    ax.errorbar([s.width for s in done], [s.best_loss for s in done], yerr=spread, fmt="o", color="black",
                capsize=3, label="best loss per level (mean over seeds " + ("± their spread)" if any(spread)
                                                                             else "; one seed: no spread)"))
    partial = [s for s in data.levels if s.state != "done" and s.best_loss is not None]
    if partial:
        ax.plot([s.width for s in partial], [s.best_loss for s in partial], "o", mfc="none", color="black",
                label="best so far (unfinished level)")
    fit = data.loss_fit
    if isinstance(fit, PowerLawFit) and fit.dof == 0:
        n = np.geomspace(done[0].width, done[-1].width, 100)
        ax.plot(n, [fit.predict(float(w)).value for w in n], color="tab:blue",
                label=f"A n^-alpha + E through {fit.n_points} widths: exact interpolation, no prediction")
    elif isinstance(fit, PowerLawFit):
        n = np.geomspace(done[0].width, max(data.target_width, done[-1].width), 100)
        preds = [fit.predict(float(w)) for w in n]
        bound = " (a constraint is active)" if fit.at_bound else ""
        ax.plot(n, [p.value for p in preds], color="tab:blue",
                label=f"A n^-alpha + E: alpha={format_uncertain(fit.alpha, fit.alpha_stderr)} "
                      f"(paper {PAPER_LOSS_ALPHA}), E={format_uncertain(fit.E, fit.E_stderr)}{bound}")
        band_ = np.array([p.interval(1.0) for p in preds])
        if np.all(np.isfinite(band_)):
            ax.fill_between(n, band_[:, 0], band_[:, 1], color="tab:blue", alpha=0.2)
        if not fit.at_bound:  # a clamped E (e.g. 0) says nothing and would squash the axis
            ax.axhline(fit.E, color="tab:blue", ls=":", lw=1, label="E (loss at infinite width)")
        at = fit.predict(float(data.target_width))
        ax.plot([data.target_width], [at.value], "D", color="tab:orange",
                label=f"width {data.target_width}: {format_uncertain(at.value, at.stderr)}")
    else:
        ax.set_title(f"no fit: {fit}", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("final val loss (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_compute(data: ReportData, path: Path) -> Path:
    """FLOPs per level and cumulative; then the sweep against the final run and brute force."""
    c = data.compute
    fig = Figure(figsize=(11.5, 4.0), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    labels = [f"L{s.level}\nw{s.width}" for s in data.levels]
    ax.bar(labels, [s.flops for s in data.levels], color="tab:blue", label="spent per level")
    ax.bar(labels, [c.planned_level_flops[s.level] for s in data.levels], fill=False, ec="black", ls="--",
           label="planned per level")
    ax.plot(labels, [s.cumulative_flops for s in data.levels], "o-", color="tab:orange", label="cumulative")
    ax.set_ylabel("model FLOPs")
    ax.set_title("sweep compute, from the ledger", fontsize=9)
    ax.legend(fontsize=7)
    ax2 = fig.add_subplot(1, 2, 2)
    spent = "telescoping sweep (spent)" if data.complete else "telescoping sweep (spent so far)"
    bars = [(spent, c.sweep_flops, "tab:blue"),
            (f"final run, width {data.target_width}", c.final_run_flops, "tab:green")]
    bars += [(f"brute force {b.grid} @ {b.width}\n({b.grid_kind})", b.flops, "0.6") for b in c.brute_force]
    ax2.barh([b[0] for b in bars], [max(b[1], 1.0) for b in bars], color=[b[2] for b in bars])
    for i, b in enumerate(c.brute_force, start=2):
        ax2.text(b.flops, i, f"  saves {b.savings:.1%}", va="center", fontsize=7)
    ax2.set_xscale("log")
    ax2.invert_yaxis()
    ax2.set_xlabel("model FLOPs")
    ax2.set_title(f"final run = {c.final_share:.0%} of sweep + final "
                  f"(paper: {PAPER_FINAL_SHARE[0]:.0%}-{PAPER_FINAL_SHARE[1]:.0%})", fontsize=9)
    ax2.tick_params(axis="y", labelsize=7)
    return _save(fig, path)
