"""report.md: the figures embedded beside the numbers behind them, as markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import telescope
from telescope.state import SweepState
from telescope.read.report.figures import transfer_axis
from telescope.read.report.numbers import PAPER_FINAL_SHARE, PAPER_LOSS_ALPHA, PAPER_SAVINGS, ReportData
from telescope.core.noise import SIGNIFICANCE, AxisEstimate, band, clip
from telescope.core.numbers import format_to, format_uncertain, uncertainty_decimals
from telescope.spec.sweep import SweepSpec


def _e(x: float) -> str:
    return f"{x:.4e}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(v) for v in row) + " |" for row in rows), ""]


def _image(data: ReportData, key: str, alt: str) -> list[str]:
    path = data.figures.get(key)
    return [f"![{alt}]({path.name})", ""] if path else []


def render_markdown(spec: SweepSpec, state: SweepState, data: ReportData) -> str:
    status = ("complete" if data.complete else f"stopped: {data.stopped}" if data.stopped
              else f"unfinished: {sum(s.state == 'done' for s in data.levels)} of {spec.n_levels} levels done")
    lines = [
        f"# Sweep report: {spec.name}", "",
        f"- directory: `{data.directory}`",
        f"- status: {status}",
        f"- axes: {', '.join(f'{a.name} ({a.scale})' for a in spec.axes)}; seeds per point: {len(spec.seeds)}",
        f"- widths: {' -> '.join(map(str, spec.widths))} (calibration {spec.calibration_width}); "
        f"target width {spec.target_width}",
        f"- made by telescope {telescope.__version__}; every number below is recomputable from "
        f"`trials.parquet` (losses are the mean final validation loss over seeds; a diverged or "
        f"failed seed makes a point infinitely bad, as the rule ranks it)",
        "",
    ]
    lines += _levels_section(spec, data)
    lines += _transfer_section(spec, data)
    lines += _grids_section(state, data)
    lines += _drift_section(spec, data)
    lines += _loss_section(data)
    lines += _compute_section(data)
    lines += ["## Muon coordinate check", ""] + _image(data, "coordcheck", "coordinate check")
    lines += [f"- {note}" for note in data.notes] + [""]
    return "\n".join(lines)


def _levels_section(spec: SweepSpec, data: ReportData) -> list[str]:
    header = ["level", "width", "grid", "state", "trials", "completed", "diverged", "failed", "FLOPs",
              "cumulative FLOPs", "best loss", "seed spread", *(f"optimum {n}" for n in spec.axis_names), "method",
              "bracketed"]
    rows = []
    for s in data.levels:
        best, spread = _loss_cells(s.best_loss, s.best_loss_std)
        if s.noise is not None:
            opt = [s.noise.axes[n].text() for n in spec.axis_names]
        else:
            opt = [f"{s.optimum[n]:.4g}" for n in spec.axis_names] if s.optimum else ["-"] * len(spec.axis_names)
        rows.append([s.level, s.width, s.shape, s.state, s.trials, s.completed, s.diverged, s.failed,
                     _e(s.flops), _e(s.cumulative_flops), best, spread, *opt, s.method or "-",
                     "-" if s.bracketed is None else "yes" if s.bracketed else "**no**"])
    lines = ["## Levels", ""] + _table(header, rows)
    lines += ["Best loss: the mean over seeds of the level's best point, to the digits its seed spread (the std "
              "over seeds) allows. Optima: the value to the digits its uncertainty allows, and its one-sigma "
              "band, inside the axis's valid range (a parametric bootstrap of the rule over the seed noise; "
              "`telescope.core.noise`).", ""]
    for s in data.levels:
        if s.seed_noise is not None or s.noise is not None:
            notes = s.noise.notes if s.noise else []
            noise = s.noise.noise if s.noise else s.seed_noise
            lines.append(f"- level {s.level}: {noise.text()}" + "".join(f"; {n}" for n in notes))  # type: ignore[union-attr]
    lines.append("")
    if any(s.bracketed is False for s in data.levels):
        lines += ["An optimum that is not bracketed sits on an edge of its level's grid after every ring the "
                  "spec allowed: the true optimum may lie beyond it (each level's notes below say which fix "
                  "would bracket it).", ""]
    return lines


def _loss_cells(mean: float | None, std: float | None) -> tuple[str, str]:
    """A mean loss to the digits its seed spread allows, and the spread; 4 decimals without one."""
    if mean is None:
        return "-", "-"
    if std is None or not math.isfinite(std):
        return f"{mean:.4f}", "-"
    d = uncertainty_decimals(mean, std)
    return format_to(mean, d), format_to(std, d)


def _transfer_section(spec: SweepSpec, data: ReportData) -> list[str]:
    if "transfer" not in data.figures:
        return []
    x = transfer_axis(spec)
    return ["## Loss vs learning rate per width (muTransfer)", "",
            f"One curve per width. The first panel takes each {x} value's best loss over the other axes; "
            f"the others are slices near the base grid's values of the other axes, each curve at one exact "
            f"value of them (its legend gives it; a narrowed level's grid sits elsewhere), so a line joins "
            f"only points that differ in {x} alone. A sampler level's points are markers without a line. "
            f"Stars: each finished level's best grid point; dotted lines: its refined optimum. Dashed "
            f"curves: a level still running.", "",
            *_image(data, "transfer", "loss vs learning rate per width")]


def _grids_section(state: SweepState, data: ReportData) -> list[str]:
    lines = ["## The grid of each level", "",
             "Cells: mean final loss over seeds; the colour bar states the level's seed noise, against which "
             "differences between cells are to be read. Red dashed box and dots: the next level's grid. "
             "Star: the level's optimum (its cell's number moved aside). Red x: diverged; black square: failed; "
             "hatched: not run yet. A sampler level shows its samples where they fell inside its grey search box.",
             ""]
    for s in data.levels:
        lines += [f"### Level {s.level} (width {s.width}, {s.shape}, {s.state})", ""]
        lines += _image(data, f"grid_level{s.level}", f"level {s.level} grid")
        if s.level < len(state.levels):
            lines += [f"- {note}" for note in state.levels[s.level].notes] + [""]
        elif state.pending is not None and state.pending.level == s.level:
            lines += [f"- {state.pending.step.note}", f"- in progress: {s.trials} trials recorded", ""]
    return lines


def _drift_section(spec: SweepSpec, data: ReportData) -> list[str]:
    lines = ["## Optimum drift with width", "",
             "x*(n) = x_inf - alpha/n (muP's finite-width drift) or, where three or more levels' optima agree "
             "with it better, x*(n) = c * n^alpha (a drift by a power of width, which never levels off), "
             "fitted over the finished levels' optima in each axis's scale (ln x on "
             "a log axis), each optimum weighted by its uncertainty: the larger of half its level's grid "
             "spacing and its bootstrap uncertainty (as `telescope export --extrapolate` does). x_inf and "
             "the prediction are real values; alpha is in scale units. The prediction is used only where "
             f"the fit has a degree of freedom left and alpha is significantly non-zero (p < {SIGNIFICANCE}); "
             "otherwise the calibration optimum stands.", ""]
    lines += _image(data, "drift", "optimum vs 1/width")
    rows, notes = [], []
    axes = {a.name: a for a in spec.axes}
    for name in spec.axis_names:
        fit, ex = data.drift[name], data.extrapolations.get(name)
        used = [ex.estimate.display, _band_text(ex.estimate), ex.source] if ex else ["-", "-", "-"]
        if ex is not None and ex.note:
            notes.append(f"- {name}: {ex.note}.")
        if isinstance(fit, str):
            rows.append([name, "-", "-", "-", "-", *used, f"no fit: {fit}"])
            continue
        inf = fit.limit
        if inf is None:
            x_inf_text = "none (power law)"
        else:
            x_inf = clip(axes[name], inf.value)
            x_inf_text = AxisEstimate(name, x_inf, inf.stderr, band(axes[name], x_inf, inf.stderr)).display
        d = uncertainty_decimals(fit.alpha, fit.alpha_stderr)
        p = "-" if ex is None or math.isnan(ex.alpha_p) else f"{ex.alpha_p:.2g}"
        rows.append([name, x_inf_text, format_to(fit.alpha, d), format_to(fit.alpha_stderr, d, 3), p, *used,
                     f"{fit.n_points} levels, {fit.dof} dof, {fit.uncertainty_source}; {fit.law}"])
    header = ["axis", "x_inf", "alpha", "alpha stderr", "alpha p", f"x* at width {data.target_width}",
              "1-sigma band", "source", "from"]
    return lines + _table(header, rows) + notes + ([""] if notes else [])


def _band_text(e: AxisEstimate) -> str:
    lo, hi = e.band
    return f"[{format_to(lo, e.decimals)}, {format_to(hi, e.decimals)}]"


def _loss_section(data: ReportData) -> list[str]:
    lines = ["## Best loss vs width", ""] + _image(data, "loss_vs_width", "best loss vs width")
    fit = data.loss_fit
    if isinstance(fit, str):
        return lines + [f"No fit of L = A * width^(-alpha) + E: {fit}. The paper reports alpha = "
                        f"{PAPER_LOSS_ALPHA}.", ""]
    if fit.dof == 0:
        rows = [[name, f"{value:.4g}", "-"] for name, value in (("A", fit.A), ("alpha", fit.alpha), ("E", fit.E))]
        return lines + [f"L = A * width^(-alpha) + E through {fit.n_points} widths: three parameters pass exactly "
                        f"through three points (no degree of freedom left), an exact interpolation, not a "
                        f"prediction: no loss is predicted at width {data.target_width} and no parameter has an "
                        f"error bar. The paper reports alpha = {PAPER_LOSS_ALPHA}.", ""] \
            + _table(["parameter", "value", "stderr"], rows)
    rows = [[name, *_uncertain_cells(value, err)]
            for name, value, err in (("A", fit.A, fit.A_stderr), ("alpha", fit.alpha, fit.alpha_stderr),
                                     ("E", fit.E, fit.E_stderr))]
    at = fit.predict(data.target_width)
    bound = " (a constraint is active: the stderrs are only indicative)" if fit.at_bound else ""
    return lines + [f"L = A * width^(-alpha) + E over {fit.n_points} widths ({fit.dof} degree"
                    f"{'s' if fit.dof != 1 else ''} of freedom, {fit.uncertainty_source}); the paper reports alpha = "
                    f"{PAPER_LOSS_ALPHA}. Predicted loss at width {data.target_width}: "
                    f"{format_uncertain(at.value, at.stderr)}{bound}.", ""] \
        + _table(["parameter", "value", "stderr"], rows)


def _uncertain_cells(value: float, err: float) -> tuple[str, str]:
    d = uncertainty_decimals(value, err)
    return format_to(value, d), (format_to(err, d, 3) if d is not None else "-")


def _compute_section(data: ReportData) -> list[str]:
    c = data.compute
    so_far = "" if data.complete else " so far"
    lines = ["## Compute", "", *_image(data, "compute", "compute accounting"),
             "Model FLOPs (6 per matmul parameter per token plus attention). Sweep FLOPs are the ledger's "
             "`flops` column: what the trials actually spent, widening and failures included.", ""]
    lines += _table(["level", "width", "FLOPs spent", "cumulative spent", "FLOPs planned"], [
        [s.level, s.width, _e(s.flops), _e(s.cumulative_flops), _e(c.planned_level_flops[s.level])]
        for s in data.levels])
    lines += _table(["quantity", "value"], [
        [f"sweep FLOPs spent{so_far}", _e(c.sweep_flops)],
        ["sweep FLOPs planned (no widening)", _e(c.planned_flops)],
        [f"final run at width {data.target_width} (planned)", _e(c.final_run_flops)],
        ["final run share of sweep + final", f"{c.final_share:.2%}"],
    ])
    lines += [f"The paper: the final run takes {PAPER_FINAL_SHARE[0]:.0%}-{PAPER_FINAL_SHARE[1]:.0%} of the total "
              f"compute; here {c.final_share:.2%}.", ""]
    rows = [[b.grid_kind, b.grid, b.width, b.trials, _e(b.flops), f"{b.savings:.2%}", f"{b.planned_savings:.2%}"]
            for b in c.brute_force]
    lines += ["Against a brute-force grid run entirely at one width (base resolution: the base grid's points; "
              "finest spacing: the last level's spacing over the base range):", ""]
    lines += _table(["brute force", "grid", "width", "trials", "FLOPs", f"savings (spent{so_far})",
                     "savings (planned)"], rows)
    return lines + [f"The paper: {PAPER_SAVINGS}.", ""]
