"""The numbers of a sweep report, from the sweep directory's ledger and replayed state.

Each number comes from the module that owns it: levels, grids and optima from replaying the rule
(telescope.state.sweep_state), spend from the ledger's model and Newton-Schulz FLOPs
(telescope.store.records.total_flops, what the plan prices too), the final run's and brute
force's price from telescope.spec.plan, the drift and loss-vs-width laws from telescope.core.fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from telescope.core.fits import DriftFit, InsufficientDataError, PowerLawFit, fit_power_law
from telescope.core.noise import Extrapolation, LevelNoise, Noise, PointLoss, pooled_noise
from telescope.spec.plan import Plan
from telescope.state import SweepState, row_loss
from telescope.spec.sweep import SweepSpec
from telescope.store.records import total_flops
from telescope.core.rule import LevelGrid, LevelResult

REPORT_FILE = "report.md"
# What arXiv 2505.02222 reports, quoted beside this sweep's own numbers.
PAPER_LOSS_ALPHA = 0.31
PAPER_SAVINGS = "savings against a brute-force grid at full width \"typically higher than 50%\""
PAPER_FINAL_SHARE = (0.20, 0.99)


@dataclass(frozen=True)
class LevelSummary:
    """One level as the report tables show it; every number recomputable from the ledger."""

    level: int
    width: int
    grid: str  # "5x5", "-" where the grid is unknown (a stopped level)
    state: str  # "done" | "partial" (the pending level) | "stopped"
    trials: int  # recorded
    completed: int
    diverged: int
    failed: int
    flops: float  # spent at this level, model + Newton-Schulz, from the ledger
    cumulative_flops: float
    best_loss: float | None  # mean over seeds; done: the optimum's loss; otherwise the best full point so far
    optimum: dict[str, float] | None  # done levels only: the refined optimum
    method: str | None
    bracketed: bool | None = None  # done levels only: the optimum is interior on every axis that could grow
    best_loss_std: float | None = None  # the seed spread at that point (None with one seed)
    sampler: str = "grid"  # "grid" or the Optuna sampler that drew the level's points
    noise: LevelNoise | None = None  # done levels: the optimum's uncertainty and each axis's effect
    seed_noise: Noise | None = None  # the level's seed noise, pooled over its points (partial levels too)
    n_seeds: int = 1  # seeds per point in the spec

    @property
    def samples(self) -> bool:
        """The level's points were drawn by a sampler inside the grid's box, not laid on the grid."""
        return self.sampler != "grid"

    @property
    def shape(self) -> str:
        """"3x3 grid", or "9 tpe samples in a 3x3 box" for a sampler level."""
        if self.samples:
            return f"{self.trials // max(self.n_seeds, 1)} {self.sampler} samples in a {self.grid} box"
        return f"{self.grid} grid"


@dataclass(frozen=True)
class BruteForceSaving:
    grid_kind: str  # "base resolution" | "finest spacing" (see telescope.spec.plan)
    width: int
    grid: str
    trials: int
    flops: float
    savings: float  # 1 - FLOPs actually spent / brute force's
    planned_savings: float  # the plan's estimate, from planned FLOPs


@dataclass(frozen=True)
class Compute:
    sweep_flops: float  # spent so far, model + Newton-Schulz, summed from the ledger
    planned_flops: float  # the plan's estimate for the whole sweep, widening excluded
    planned_level_flops: tuple[float, ...]  # the plan's estimate per level
    final_run_flops: float  # one run at the target width with the spec's steps
    final_share: float  # final / (sweep + final)
    brute_force: tuple[BruteForceSaving, ...]


@dataclass
class ReportData:
    """What `make_report` wrote and the numbers behind it; `figures` maps a name to its PNG."""

    sweep: str
    directory: Path
    outdir: Path
    complete: bool
    stopped: str | None
    target_width: int
    levels: list[LevelSummary]
    drift: dict[str, DriftFit | str]  # per axis: the fit, or why there is none
    loss_fit: PowerLawFit | str
    compute: Compute
    extrapolations: dict[str, Extrapolation] = field(default_factory=dict)  # at target_width; empty before level 0
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the report could not show, and why

    @property
    def markdown(self) -> Path:
        return self.outdir / REPORT_FILE


def point_losses(trials: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """One row per (level, point): `loss` is the mean final loss over seeds as the rule ranks it
    (replay.row_loss: a diverged or failed seed makes the point infinitely bad), `loss_std` the
    seed spread (NaN with one seed or a bad seed), `seeds` how many seeds are recorded, `status`
    the worst one (failed, then diverged, then completed)."""
    columns = ["level", "width", *axes, "loss", "loss_std", "seeds", "status"]
    if trials.empty:
        return pd.DataFrame(columns=columns)
    ranked = trials.assign(loss=[row_loss(r) for r in trials.to_dict("records")])
    grouped = ranked.groupby(["level", "width", *axes], sort=True)
    table = grouped.agg(loss=("loss", "mean"), loss_std=("loss", "std"), seeds=("seed", "nunique"),
                        status=("status", _worst))
    table["loss_std"] = table["loss_std"].where(np.isfinite(table["loss"]))
    return table.reset_index()[columns]


def _point_spreads(points: pd.DataFrame) -> list[PointLoss]:
    return [PointLoss(float(r.loss), float(r.loss_std), int(r.seeds)) for r in points.itertuples(index=False)]


def _worst(statuses: pd.Series) -> str:
    present = set(statuses)
    return next((s for s in ("failed", "diverged") if s in present), "completed")


def level_summaries(spec: SweepSpec, state: SweepState, trials: pd.DataFrame, points: pd.DataFrame,
                    noises: Sequence[LevelNoise] = ()) -> list[LevelSummary]:
    """One summary per level seen; `noises` (one per finished level, as `level_noises` gives)
    adds each finished level's uncertainties."""
    seen = set(trials["level"].astype(int)) | set(range(len(state.levels)))
    if state.pending is not None:
        seen.add(state.pending.level)
    rows, cumulative = [], 0.0
    for level in sorted(seen):
        at = trials[trials["level"] == level]
        counts = at["status"].value_counts()
        flops = total_flops(at)
        cumulative += flops
        grid, done = level_grid(state, level), level < len(state.levels)
        optimum = state.levels[level].optimum if done else None
        noise = noises[level] if done and level < len(noises) else None
        at_level = points[points["level"] == level]
        best = (noise.loss if noise else _best_so_far(at_level, len(spec.seeds)))
        rows.append(LevelSummary(
            level=level, width=spec.widths[level], grid=grid.shape if grid is not None else "-",
            state="done" if done else "partial" if grid is not None else "stopped",
            trials=len(at), completed=int(counts.get("completed", 0)),
            diverged=int(counts.get("diverged", 0)), failed=int(counts.get("failed", 0)),
            flops=flops, cumulative_flops=cumulative,
            best_loss=optimum.loss if optimum else (best.mean if best else None),
            optimum={k: float(v) for k, v in optimum.point.items()} if optimum else None,
            method=optimum.method if optimum else None,
            bracketed=state.levels[level].bracketed if done else None,
            best_loss_std=(best.std if best and math.isfinite(best.std) else None),
            sampler=spec.samplers[level], noise=noise, n_seeds=len(spec.seeds),
            seed_noise=noise.noise if noise else pooled_noise(_point_spreads(at_level)),
        ))
    return rows


def _best_so_far(points: pd.DataFrame, n_seeds: int) -> PointLoss | None:
    """A pending level's best point among those with every seed recorded (a partial mean
    would rank a point on fewer seeds than the rule will)."""
    full = [p for p in _point_spreads(points) if p.n_seeds >= n_seeds and math.isfinite(p.mean)]
    return min(full, key=lambda p: p.mean) if full else None


def level_grid(state: SweepState, level: int) -> LevelGrid | None:
    """A level's grid: the finished level's (after widening), or the pending step's."""
    if level < len(state.levels):
        return state.levels[level].grid
    if state.pending is not None and state.pending.level == level:
        return state.pending.step.grid
    return None  # a level the rule stopped at keeps no grid in the state


def loss_fit(levels: Sequence[LevelResult], noises: Sequence[LevelNoise] = ()) -> PowerLawFit | str:
    """L(n) = A n^-alpha + E over the finished levels' best losses, each weighted by its noise
    (sigma / sqrt(seeds), from `noises`) where every level has a positive noise estimate."""
    sigma = [nz.noise.sigma / math.sqrt(nz.loss.n_seeds) for nz in noises]
    usable = len(sigma) == len(levels) and all(math.isfinite(s) and s > 0 for s in sigma)
    try:
        return fit_power_law([lv.width for lv in levels], [lv.optimum.loss for lv in levels],
                             sigma=sigma if usable else None)
    except InsufficientDataError as err:
        return err.message


def compute_summary(planned: Plan, trials: pd.DataFrame) -> Compute:
    """The plan's prices for the final run and for brute force, set against what was spent."""
    spent = total_flops(trials)
    final = planned.final_run_flops
    brute = tuple(
        BruteForceSaving(b.grid_kind, b.width, b.grid, b.trials, b.flops, 1 - spent / b.flops, b.savings)
        for b in planned.brute_force
    )
    return Compute(spent, planned.flops, tuple(lv.flops for lv in planned.levels), final,
                   final / (spent + final), brute)
