"""report.md: the figures embedded beside the numbers behind them, as markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import telescope
from telescope.state import SweepState
from telescope.read.report.figures import transfer_axis
from telescope.read.report.numbers import PAPER_FINAL_SHARE, PAPER_LOSS_ALPHA, PAPER_SAVINGS, ReportData
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
              "cumulative FLOPs", "best loss", *(f"optimum {n}" for n in spec.axis_names), "method", "bracketed"]
    rows = []
    for s in data.levels:
        best = "-" if s.best_loss is None else f"{s.best_loss:.6f}"
        opt = [f"{s.optimum[n]:.6g}" for n in spec.axis_names] if s.optimum else ["-"] * len(spec.axis_names)
        rows.append([s.level, s.width, s.grid, s.state, s.trials, s.completed, s.diverged, s.failed,
                     _e(s.flops), _e(s.cumulative_flops), best, *opt, s.method or "-",
                     "-" if s.bracketed is None else "yes" if s.bracketed else "**no**"])
    lines = ["## Levels", ""] + _table(header, rows)
    if any(s.bracketed is False for s in data.levels):
        lines += ["An optimum that is not bracketed sits on an edge of its level's grid after every ring the "
                  "spec allowed: the true optimum may lie beyond it (each level's notes below say which fix "
                  "would bracket it).", ""]
    return lines


def _transfer_section(spec: SweepSpec, data: ReportData) -> list[str]:
    if "transfer" not in data.figures:
        return []
    x = transfer_axis(spec)
    return ["## Loss vs learning rate per width (muTransfer)", "",
            f"One curve per width. The first panel takes each {x} value's best loss over the other axes; "
            f"the others are slices at the base grid's values of the other axes (a narrowed level's points "
            f"fall into the slice of the nearest base value). Stars: each finished level's best grid point; "
            f"dotted lines: its refined optimum. Dashed curves: a level still running.", "",
            *_image(data, "transfer", "loss vs learning rate per width")]


def _grids_section(state: SweepState, data: ReportData) -> list[str]:
    lines = ["## The grid of each level", "",
             "Cells: mean final loss over seeds. Red dashed box and dots: the next level's grid. "
             "Star: the level's optimum. Red x: diverged; black square: failed; hatched: not run yet.", ""]
    for s in data.levels:
        lines += [f"### Level {s.level} (width {s.width}, {s.grid}, {s.state})", ""]
        lines += _image(data, f"grid_level{s.level}", f"level {s.level} grid")
        if s.level < len(state.levels):
            lines += [f"- {note}" for note in state.levels[s.level].notes] + [""]
        elif state.pending is not None and state.pending.level == s.level:
            lines += [f"- {state.pending.step.note}", f"- in progress: {s.trials} trials recorded", ""]
    return lines


def _drift_section(spec: SweepSpec, data: ReportData) -> list[str]:
    lines = ["## Optimum drift with width", "",
             "x*(n) = x_inf - alpha/n fitted over the finished levels' optima in each axis's scale (ln x on "
             "a log axis), each optimum weighted by half its level's grid spacing (as `telescope export "
             "--extrapolate` does). x_inf and the prediction are real values; alpha is in scale units.", ""]
    lines += _image(data, "drift", "optimum vs 1/width")
    rows = []
    for name in spec.axis_names:
        fit = data.drift[name]
        if isinstance(fit, str):
            rows.append([name, "-", "-", "-", "-", "-", f"no fit: {fit}"])
            continue
        at = fit.predict(data.target_width)
        lo, hi = at.interval(1.0)
        rows.append([name, f"{fit.predict(math.inf).value:.6g}", f"{fit.alpha:.6g}", f"{fit.alpha_stderr:.3g}",
                     f"{at.value:.6g}", f"[{lo:.4g}, {hi:.4g}]", f"{fit.n_points} levels, {fit.uncertainty_source}"])
    header = ["axis", "x_inf", "alpha", "alpha stderr", f"x* at width {data.target_width}", "1-sigma band", "from"]
    return lines + _table(header, rows)


def _loss_section(data: ReportData) -> list[str]:
    lines = ["## Best loss vs width", ""] + _image(data, "loss_vs_width", "best loss vs width")
    fit = data.loss_fit
    if isinstance(fit, str):
        return lines + [f"No fit of L = A * width^(-alpha) + E: {fit}. The paper reports alpha = "
                        f"{PAPER_LOSS_ALPHA}.", ""]
    rows = [["A", f"{fit.A:.6g}", f"{fit.A_stderr:.3g}"], ["alpha", f"{fit.alpha:.6g}", f"{fit.alpha_stderr:.3g}"],
            ["E", f"{fit.E:.6g}", f"{fit.E_stderr:.3g}"]]
    at = fit.predict(data.target_width)
    bound = " (a constraint is active: the stderrs are only indicative)" if fit.at_bound else ""
    return lines + [f"L = A * width^(-alpha) + E over {fit.n_points} widths; the paper reports alpha = "
                    f"{PAPER_LOSS_ALPHA}. Predicted loss at width {data.target_width}: {at.value:.6f}{bound}.", ""] \
        + _table(["parameter", "value", "stderr"], rows)


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
