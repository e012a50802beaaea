"""`telescope report DIR --out OUTDIR`: what a sweep found and what it cost, as PNG figures and a
markdown file that embeds them beside the numbers behind them.

Everything comes from the sweep directory alone, through the modules that own each answer: the
levels, grids and optima from replaying the rule against the ledger (telescope.state.sweep_state),
spend from the ledger's `flops` column, the final run's and brute force's cost from the plan
(telescope.spec.plan), the drift and loss-vs-width laws from telescope.core.fits. An unfinished sweep
reports what exists: its finished levels and the pending level's partial grid. Every number carries
its noise (telescope.core.noise): losses their seed spread, optima their uncertainty, printed to the
digits that allows; a fit with no degree of freedom left is shown as the exact interpolation it is.

    data = make_report("runs/demo", "runs/demo-report")  # writes report.md and the figures
    data.levels[-1].optimum, data.drift["lr"].alpha, data.compute.final_share
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from telescope.core.contract import COORDCHECK_DEFAULTS, TrialConfig
from telescope.state import sweep_state
from telescope.errors import ConfigError
from telescope.store.files import atomic_write
from telescope.spec.plan import plan
from telescope.state import SweepState
from telescope.read.report.figures import (
    plot_compute, plot_drift, plot_level_grid, plot_loss_vs_width, plot_transfer,
)
from telescope.read.report.markdown import render_markdown
from telescope.read.report.numbers import (
    REPORT_FILE, BruteForceSaving, Compute, LevelSummary, ReportData, compute_summary, level_summaries,
    loss_fit, point_losses,
)
from telescope.core.noise import extrapolations, level_noises, measured_drift_fits
from telescope.spec.sweep import SweepSpec

__all__ = [
    "REPORT_FILE", "BruteForceSaving", "Compute", "LevelSummary", "ReportData", "make_report",
]
COORDCHECK_STEPS = 3  # the report's coordinate check is a quick picture, not the full study


def make_report(directory: str | Path, outdir: str | Path, *, axes: Sequence[str] | None = None,
                coordcheck: bool = True, compare: str | Path | None = None) -> ReportData:
    """Write OUTDIR/report.md and its figures for the sweep in `directory`; return the numbers.

    `axes`: the two axes of the per-level grid pictures (default: the spec's first two).
    `coordcheck`: also run a seconds-long Muon coordinate check (telescope.train.coordcheck) at small
    widths, when that module is available.
    `compare`: a `telescope compare` study's directory, whose Muon-vs-AdamW section (R(B) and
    the tokens-vs-steps trade-off) is added to the report.
    """
    spec, ledger, state = sweep_state(directory)
    pair = _heatmap_axes(spec, axes)
    outdir = _prepare_outdir(Path(directory), Path(outdir))
    trials = ledger.trials()
    points = point_losses(trials, spec.axis_names)
    noises = level_noises(state.levels)
    drift = measured_drift_fits(spec.axes, state.levels, noises)
    data = ReportData(
        sweep=spec.name, directory=Path(directory), outdir=outdir, complete=state.complete,
        stopped=state.stopped, target_width=spec.target_width,
        levels=level_summaries(spec, state, trials, points, noises),
        drift=drift, loss_fit=loss_fit(state.levels, noises),
        compute=compute_summary(plan(spec), trials),
        extrapolations=extrapolations(spec.axes, state.levels, noises, spec.target_width, drift)
        if state.levels else {},
    )
    if points.empty:
        data.notes.append("no trial is recorded yet, so there is nothing to plot but the compute plan")
    else:
        data.figures["transfer"] = plot_transfer(spec, state, points, outdir / "transfer.png")
        for summary in data.levels:
            path = outdir / f"grid_level{summary.level}.png"
            data.figures[f"grid_level{summary.level}"] = plot_level_grid(spec, state, points, summary, pair, path)
    if state.levels:
        data.figures["drift"] = plot_drift(spec, state.levels, data, outdir / "drift.png")
        data.figures["loss_vs_width"] = plot_loss_vs_width(data, outdir / "loss_vs_width.png")
    data.figures["compute"] = plot_compute(data, outdir / "compute.png")
    if coordcheck:
        _coordcheck(spec, state, outdir / "coordcheck.png", data)
    else:
        data.notes.append("coordinate check: skipped (--no-coordcheck)")
    markdown = render_markdown(spec, state, data)
    if compare is not None:
        markdown += compare_section(compare, outdir, data)
    atomic_write(data.markdown, markdown)
    return data


def compare_section(directory: str | Path, outdir: Path, data: ReportData) -> str:
    """The Muon-vs-AdamW study as a report section: its figures redrawn into OUTDIR, its table."""
    from telescope.studies.compare.figures import plot_compare
    from telescope.studies.compare.results import format_table, load_compare

    table = load_compare(directory).table
    names = plot_compare(table, outdir)
    data.figures.update({f"compare_{k}": outdir / v for k, v in names.items()})
    images = "\n\n".join(f"![{k}]({v})" for k, v in names.items())
    return (f"\n## Muon vs AdamW (`telescope compare`, {directory})\n\n{images}\n\n"
            f"```text\n{format_table(table)}\n```\n")


def _heatmap_axes(spec: SweepSpec, axes: Sequence[str] | None) -> tuple[str, str | None]:
    names = spec.axis_names
    chosen = list(axes) if axes else list(names[:2])
    unknown = [a for a in chosen if a not in names]
    if unknown or len(set(chosen)) != len(chosen) or len(chosen) > 2:
        raise ConfigError("--axes", f"must name one or two distinct swept axes ({', '.join(names)}); "
                                    f"got {', '.join(chosen)}")
    return chosen[0], chosen[1] if len(chosen) > 1 else None


def _prepare_outdir(directory: Path, outdir: Path) -> Path:
    if outdir.resolve() == directory.resolve():
        raise ConfigError(str(outdir), "is the sweep directory itself; give the report its own directory")
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(str(outdir), "exists and is not a directory; give a directory for the report")
    outdir.mkdir(parents=True, exist_ok=True)
    return outdir


def coordcheck_setup(spec: SweepSpec, state: SweepState,
                     defaults: Mapping[str, Any]) -> tuple[TrialConfig, tuple[int, ...]]:
    """The sweep's own model, optimizer and data at the coordinate check's small shape, at the
    optimum found so far: widths of 2, 4 and 8 heads, so the check takes seconds. One torch
    thread: matrices this small gain nothing from more, and on a busy machine a thread pool
    spends its time waiting (10x slower here)."""
    point = dict(state.optimum.point) if state.optimum else {}
    w0 = 2 * spec.fixed.head_dim
    shape = {k: defaults[k] for k in ("depth", "seq_len", "batch_size")}
    cfg = spec.fixed.replace(width=w0, base_width=w0, num_threads=1, **shape, **point)
    return cfg, (w0, 2 * w0, 4 * w0)


def _coordcheck(spec: SweepSpec, state: SweepState, path: Path, data: ReportData) -> None:
    """Run the seconds-long coordinate check (torch, imported only here); a report never fails for it."""
    from telescope.train import coordcheck

    try:
        cfg, widths = coordcheck_setup(spec, state, COORDCHECK_DEFAULTS)
        rules = ("adam-mup", "spectral") if cfg.optimizer == "muon" else None
        check = coordcheck.coord_check(cfg, widths=widths, steps=COORDCHECK_STEPS, seeds=1,
                                       parameterizations=("mup", "sp"), hidden_lr_rules=rules)
        coordcheck.plot(check, str(path))
    except Exception as err:  # an optional figure: say what went wrong instead of losing the report
        data.notes.append(f"coordinate check: failed ({type(err).__name__}: {err})")
        return
    data.figures["coordcheck"] = path
