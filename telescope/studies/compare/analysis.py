"""From the study's recorded trials to its answer: T_opt(B) per optimizer, R(B), the Pareto
picture and the verdict on the paper's claim, as a typed `CompareTable`.

T_opt(B) is read off the *validation* curve of the best lr's run (the mean over seeds): the
validation loss is measured on fixed held-out windows -- the same windows for every batch size --
so it has no minibatch noise. A train curve, even smoothed, would cross a target early by luck,
and more so at small batches (noisier batches), which would bias R(B) along B -- the very trend
under test. Between two evaluations the loss is interpolated linearly in log-tokens, the axis on
which loss curves are closest to straight; `ratio_range` says how far the bracketing evaluations
alone pin R down.

Each run follows its own full cosine schedule, so a curve that crosses the target mid-run does so
before its lr has decayed, and overstates the tokens a run budgeted to end there would need. Both
optimizers share that bias, except the run that sets an automatic target: it crosses annealed, at
its end. So where the faster optimizer crosses early, R is if anything understated.

The curve maths (crossing ... mean_curve) is pure and works on plain sequences. `analyse` turns
the ledger's rows into dataclasses; their `to_dict()` is compare.json's layout, which the readers
(telescope.studies.compare.results, .figures) work from, so that a study read back from disk and
one just analysed are shown by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from telescope.core.flops import muon_step_flops
from telescope.core.numbers import json_safe
from telescope.errors import ConfigError
from telescope.state import row_loss
from telescope.studies.compare.spec import OPTIMIZERS, CompareSpec, StudyTrial

if TYPE_CHECKING:
    import pandas as pd

TARGET_GIVEN = "given in the spec"
TARGET_AUTO = "auto: the highest of the best runs' lowest validation losses, so every best run reaches it"
MEASURED_ON = ("validation loss (the same held-out windows for every batch size), seed mean, "
               "interpolated linearly in log-tokens between evaluations")
ValCurve = tuple[list[int], list[float]]  # (steps, validation losses) of one trial


# ============================================================================ the curve maths (pure)


def crossing(tokens: Sequence[float], losses: Sequence[float], target: float) -> tuple[int | None, int] | None:
    """Where a loss curve first reaches `target`: (index of the last finite evaluation before it,
    None if there is none; index of the first evaluation at or below the target), or None if it
    never does. Non-finite losses (evaluations of a run that was diverging) are skipped."""
    if len(tokens) != len(losses):
        raise ConfigError("curve", f"has {len(losses)} losses for {len(tokens)} token counts; they must match")
    if any(not t > 0 for t in tokens) or any(b <= a for a, b in zip(tokens, tokens[1:])):
        raise ConfigError("curve", "token counts must be positive and increasing")
    previous = None
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            continue
        if loss <= target:
            return previous, i
        previous = i
    return None


def time_to_target(tokens: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """Tokens at which a loss curve first reaches `target`, or None if it never does.

    Between the last evaluation above the target and the first at or below it, the loss is taken
    as linear in log(tokens). A curve already at or below the target at its first evaluation gives
    that evaluation's tokens: nothing was measured earlier, so it is an upper bound (`censored`).
    """
    found = crossing(tokens, losses, target)
    if found is None:
        return None
    before, at = found
    if before is None or losses[at] == target:  # exactly on a point: no rounding through log/exp
        return float(tokens[at])
    t0, t1, l0, l1 = tokens[before], tokens[at], losses[before], losses[at]
    frac = (l0 - target) / (l0 - l1)
    return math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0)))


def token_ratio(t_adamw: float | None, t_muon: float | None) -> float | None:
    """R = T_AdamW / T_Muon: above 1 when Muon needs fewer tokens; None if either never got there."""
    if t_adamw is None or t_muon is None:
        return None
    return t_adamw / t_muon


def ratio_range(adamw_bracket: Sequence[float | None] | None,
                muon_bracket: Sequence[float | None] | None) -> list[float | None] | None:
    """The R that the evaluations allow, whatever the curves did between them: each T lies in its
    crossing's bracket [tokens of the last evaluation above the target, of the first at or below
    it], so R lies in [adamw low / muon high, adamw high / muon low]. A censored crossing has no
    low end (None): it gives R no lower bound for AdamW's, no upper bound for Muon's."""
    if adamw_bracket is None or muon_bracket is None:
        return None
    (a_lo, a_hi), (m_lo, m_hi) = adamw_bracket, muon_bracket
    return [None if a_lo is None else a_lo / m_hi, None if m_lo is None else a_hi / m_lo]


def auto_target(minima: Sequence[float]) -> float:
    """The highest of the runs' lowest losses: the best loss the worst run reaches, so that every
    curve crosses it (the worst one at its own minimum)."""
    finite = [m for m in minima if math.isfinite(m)]
    if not finite:
        raise ConfigError("target_loss", "no run has a finite validation loss to set an automatic target from")
    return max(finite)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better on both),
    ordered by the first coordinate. Equal points do not beat each other."""
    front = [
        i for i, (x, y) in enumerate(points)
        if not any(xo <= x and yo <= y and (xo < x or yo < y) for xo, yo in points)
    ]
    return sorted(front, key=lambda i: points[i])


def weakly_dominated(point: tuple[float, float], by: Sequence[tuple[float, float]]) -> bool:
    """Whether some point of `by` is at least as good as `point` on both coordinates."""
    return any(x <= point[0] and y <= point[1] for x, y in by)


def ratio_trend(batch_sizes: Sequence[float], ratios: Sequence[float]) -> float | None:
    """Least-squares slope of R against log2(B): how much R changes per doubling of the batch.
    None with fewer than two batch sizes."""
    if len(batch_sizes) != len(ratios):
        raise ConfigError("ratios", "need one ratio per batch size")
    if len(batch_sizes) < 2:
        return None
    x = np.log2(np.asarray(batch_sizes, dtype=float))
    slope, _ = np.polyfit(x, np.asarray(ratios, dtype=float), 1)
    return float(slope)


def mean_curve(curves: Sequence[tuple[Sequence[int], Sequence[float]]]) -> tuple[list[int], list[float]]:
    """The seed-mean of loss curves at the steps they all measured."""
    common = sorted(set.intersection(*(set(steps) for steps, _ in curves))) if curves else []
    at = [dict(zip(steps, losses)) for steps, losses in curves]
    return common, [float(np.mean([c[s] for c in at])) for s in common]


# ============================================================================ the study's table


@dataclass(frozen=True)
class LrResult:
    """One lr of an (optimizer, batch size): its seeds' mean final validation loss."""

    lr: float
    final_loss: float | None  # None unless every seed completed with a finite loss
    status: str  # the seeds' statuses, sorted and joined by "/": "completed", "diverged/missing", ...

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "final_loss": self.final_loss, "status": self.status}


@dataclass(frozen=True)
class Curve:
    """A validation curve against tokens seen (steps * batch_size * seq_len)."""

    tokens: tuple[int, ...] = ()
    val_loss: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "val_loss": list(self.val_loss)}


@dataclass(frozen=True)
class LrSweep:
    """One (optimizer, batch size)'s lr sweep and its best lr's seed-mean validation curve; the
    best-run fields stay None when no lr completed on every seed."""

    optimizer: str
    batch_size: int
    steps: int  # per run: tokens / (batch_size * seq_len)
    lrs: tuple[LrResult, ...]
    best_lr: float | None = None  # the lowest seed-mean final loss
    best_lr_on_edge: bool = False  # at an end of a grid of 3 or more: the optimum may lie beyond
    curve: Curve = Curve()
    final_loss: float | None = None  # the best lr's curve's last point
    flops_per_token: float | None = None  # model FLOPs (6ND + attention), from the ledger
    wall_time_s: float | None = None  # the best lr's seed mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer, "batch_size": self.batch_size, "steps": self.steps,
            "lrs": [r.to_dict() for r in self.lrs], "best_lr": self.best_lr,
            "best_lr_on_edge": self.best_lr_on_edge, "curve": self.curve.to_dict(), "final_loss": self.final_loss,
            "flops_per_token": self.flops_per_token, "wall_time_s": self.wall_time_s,
        }


@dataclass(frozen=True)
class TargetCrossing:
    """When a best run's curve first reached the target loss; all None if it never did."""

    tokens_to_target: float | None = None
    censored: bool = False  # already below the target at its first evaluation: an upper bound
    # tokens of the evaluations the crossing was interpolated between (the first None if censored):
    # how precisely T is known
    target_bracket: tuple[int | None, int] | None = None
    steps_to_target: float | None = None  # sequential steps: the time axis of the trade-off
    flops_to_target: float | None = None  # model FLOPs, plus Muon's Newton-Schulz work per step

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens_to_target": self.tokens_to_target, "censored": self.censored,
            "target_bracket": None if self.target_bracket is None else list(self.target_bracket),
            "steps_to_target": self.steps_to_target, "flops_to_target": self.flops_to_target,
        }

    @property
    def steps_and_tokens(self) -> tuple[float, float] | None:
        """(steps, tokens) to target: the point the trade-off plots; None if never reached."""
        if self.steps_to_target is None or self.tokens_to_target is None:
            return None
        return self.steps_to_target, self.tokens_to_target


@dataclass(frozen=True)
class Cell:
    """One (optimizer, batch size) of the study: its lr sweep and its best run's time to target."""

    sweep: LrSweep
    crossing: TargetCrossing

    @property
    def optimizer(self) -> str:
        return self.sweep.optimizer

    @property
    def batch_size(self) -> int:
        return self.sweep.batch_size

    def to_dict(self) -> dict[str, Any]:
        return {**self.sweep.to_dict(), **self.crossing.to_dict()}


@dataclass(frozen=True)
class Ratio:
    """R(B) at one batch size, and the range the evaluations bracketing each crossing allow."""

    batch_size: int
    tokens_adamw: float | None
    tokens_muon: float | None
    ratio: float | None  # None if either optimizer never reached the target
    ratio_range: tuple[float | None, float | None] | None  # (low, high); None ends are unbounded

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size, "tokens_adamw": self.tokens_adamw, "tokens_muon": self.tokens_muon,
            "ratio": self.ratio, "ratio_range": None if self.ratio_range is None else list(self.ratio_range),
        }


@dataclass(frozen=True)
class ParetoFronts:
    """Per optimizer, the batch sizes on its Pareto front of (steps, tokens) to target, by steps."""

    muon: tuple[int, ...]
    adamw: tuple[int, ...]
    adamw_front_matched_by_muon: tuple[int, int]  # (AdamW front points some Muon point matches or beats, of)

    def to_dict(self) -> dict[str, Any]:
        return {"muon": list(self.muon), "adamw": list(self.adamw),
                "adamw_front_matched_by_muon": list(self.adamw_front_matched_by_muon)}


@dataclass(frozen=True)
class Claim:
    """The paper's claim against this study's R(B)."""

    STATEMENT: ClassVar[str] = "R(B) = T_AdamW/T_Muon > 1 at every batch size and not shrinking as B grows"

    ratios_above_one: tuple[int, int]  # (batch sizes with R > 1, batch sizes)
    trend_per_doubling: float | None  # slope of R against log2(B); None with under two measured
    mean_ratio: float | None
    adamw_front_matched_by_muon: tuple[int, int]

    @property
    def all_above_one(self) -> bool:
        above, of = self.ratios_above_one
        return of > 0 and above == of

    @property
    def not_shrinking(self) -> bool:
        return self.trend_per_doubling is not None and self.trend_per_doubling >= 0

    @property
    def holds(self) -> bool:
        return self.all_above_one and self.not_shrinking

    def to_dict(self) -> dict[str, Any]:
        return {
            "statement": self.STATEMENT, "ratios_above_one": list(self.ratios_above_one),
            "trend_per_doubling": self.trend_per_doubling, "all_above_one": self.all_above_one,
            "not_shrinking": self.not_shrinking, "holds": self.holds, "mean_ratio": self.mean_ratio,
            "adamw_front_matched_by_muon": list(self.adamw_front_matched_by_muon),
        }


@dataclass(frozen=True)
class CompareTable:
    """The study's answer. `to_dict()` is compare.json, in strict JSON (no inf or NaN)."""

    name: str
    width: int
    base_width: int
    depth: int
    seq_len: int
    tokens_per_run: int
    seeds: tuple[int, ...]
    target_loss: float
    target_rule: str  # TARGET_GIVEN or TARGET_AUTO
    cells: tuple[Cell, ...]  # per optimizer (OPTIMIZERS order), per batch size (ascending)
    ratios: tuple[Ratio, ...]  # per batch size
    pareto: ParetoFronts
    claim: Claim
    notes: tuple[str, ...]  # what a reader of the numbers should know (edges, censoring, ...)
    figures: Mapping[str, str] = field(default_factory=dict)  # figure name -> PNG in the study directory

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "name": self.name, "width": self.width, "base_width": self.base_width, "depth": self.depth,
            "seq_len": self.seq_len, "tokens_per_run": self.tokens_per_run, "seeds": list(self.seeds),
            "target_loss": self.target_loss, "target_rule": self.target_rule, "measured_on": MEASURED_ON,
            "cells": [c.to_dict() for c in self.cells], "ratios": [r.to_dict() for r in self.ratios],
            "pareto": self.pareto.to_dict(), "notes": list(self.notes), "figures": dict(self.figures),
            "claim": self.claim.to_dict(),
        })


def analyse(spec: CompareSpec, trials: pd.DataFrame, curves: pd.DataFrame) -> CompareTable:
    """The study's table from the ledger's trials and curves (Ledger.trials(), Ledger.curves()).

    Reads exactly the trials the spec names; rows of other trials (a wider grid run earlier) are
    ignored, and a trial not yet recorded counts as "missing"."""
    study_trials = spec.trials()
    rows = {r["trial_id"]: r for r in trials.to_dict("records")}
    measured = curves[curves["val_loss"].notna()]
    val_curves = {tid: (g["step"].tolist(), g["val_loss"].tolist()) for tid, g in measured.groupby("trial_id")}

    sweeps = []
    for optimizer, grid in spec.lrs:
        for b in spec.batch_sizes:
            runs = [t for t in study_trials if t.optimizer == optimizer and t.batch_size == b]
            sweeps.append(_lr_sweep(spec, optimizer, b, grid, runs, rows, val_curves))

    minima = [min(s.curve.val_loss) for s in sweeps if s.curve.val_loss]
    target = spec.target_loss if spec.target_loss is not None else auto_target(minima)
    cells = tuple(Cell(s, _target_crossing(spec, s, target)) for s in sweeps)
    ratios = tuple(_ratio(b, cells) for b in spec.batch_sizes)
    pareto = _pareto(cells)
    return CompareTable(
        name=spec.name, width=spec.width, base_width=spec.fixed.base_width, depth=spec.fixed.depth,
        seq_len=spec.seq_len, tokens_per_run=spec.tokens, seeds=spec.seeds, target_loss=target,
        target_rule=TARGET_GIVEN if spec.target_loss is not None else TARGET_AUTO,
        cells=cells, ratios=ratios, pareto=pareto, claim=_claim(ratios, pareto), notes=_notes(cells, target),
    )


def _lr_sweep(spec: CompareSpec, optimizer: str, batch_size: int, grid: Sequence[float], runs: list[StudyTrial],
              rows: Mapping[str, Mapping[str, Any]], val_curves: Mapping[str, ValCurve]) -> LrSweep:
    """One (optimizer, batch size): its lr sweep and its best lr's seed-mean validation curve."""
    results = []
    for lr in grid:
        seed_rows = [rows.get(t.trial_id) for t in runs if t.lr == lr]
        losses = [row_loss(r) if r is not None else math.inf for r in seed_rows]
        statuses = sorted({str(r["status"]) if r is not None else "missing" for r in seed_rows})
        mean = float(np.mean(losses)) if losses and all(map(math.isfinite, losses)) else None
        results.append(LrResult(lr, mean, "/".join(statuses)))
    sweep = LrSweep(optimizer, batch_size, spec.steps(batch_size), tuple(results))
    scored = [(r.final_loss, r.lr) for r in results if r.final_loss is not None]
    if not scored:
        return sweep
    best_lr = min(scored)[1]
    best = [t for t in runs if t.lr == best_lr]
    steps, val_loss = mean_curve([val_curves[t.trial_id] for t in best])
    row = rows[best[0].trial_id]
    return replace(
        sweep, best_lr=best_lr, best_lr_on_edge=len(grid) >= 3 and best_lr in (grid[0], grid[-1]),
        curve=Curve(tuple(s * batch_size * spec.seq_len for s in steps), tuple(val_loss)),
        final_loss=val_loss[-1], flops_per_token=float(row["flops"]) / float(row["tokens"]),
        wall_time_s=float(np.mean([rows[t.trial_id]["wall_time_s"] for t in best])),
    )


def _target_crossing(spec: CompareSpec, sweep: LrSweep, target: float) -> TargetCrossing:
    tokens, losses = sweep.curve.tokens, sweep.curve.val_loss
    found = crossing(tokens, losses, target) if tokens else None
    if found is None:
        return TargetCrossing()
    t = time_to_target(tokens, losses, target)
    assert t is not None  # found a crossing, so there is a time
    before, at = found
    steps = t / (sweep.batch_size * spec.seq_len)
    # Muon's Newton-Schulz work is paid per step, not per token: count it, or small batches flatter Muon.
    optimizer_flops = steps * muon_step_flops(spec.width, spec.fixed.depth, spec.fixed.mlp_ratio) \
        if sweep.optimizer == "muon" else 0.0
    assert sweep.flops_per_token is not None  # set together with the curve
    return TargetCrossing(
        tokens_to_target=t, censored=before is None,
        target_bracket=(None if before is None else tokens[before], tokens[at]),
        steps_to_target=steps, flops_to_target=t * sweep.flops_per_token + optimizer_flops,
    )


def _ratio(batch_size: int, cells: Sequence[Cell]) -> Ratio:
    at_b = {c.optimizer: c.crossing for c in cells if c.batch_size == batch_size}
    adamw, muon = at_b["adamw"], at_b["muon"]
    bounds = ratio_range(adamw.target_bracket, muon.target_bracket)
    return Ratio(batch_size, adamw.tokens_to_target, muon.tokens_to_target,
                 token_ratio(adamw.tokens_to_target, muon.tokens_to_target),
                 None if bounds is None else (bounds[0], bounds[1]))


def _pareto(cells: Sequence[Cell]) -> ParetoFronts:
    """Per optimizer, the batch sizes on its Pareto front of (steps, tokens) to target; and how
    many of AdamW's front points some Muon point matches or beats on both."""
    points: dict[str, list[tuple[float, float]]] = {opt: [] for opt in OPTIMIZERS}
    batch_sizes: dict[str, list[int]] = {opt: [] for opt in OPTIMIZERS}
    for c in cells:
        point = c.crossing.steps_and_tokens
        if point is not None:
            points[c.optimizer].append(point)
            batch_sizes[c.optimizer].append(c.batch_size)
    fronts = {opt: pareto_front(points[opt]) for opt in OPTIMIZERS}
    on_front = {opt: tuple(batch_sizes[opt][i] for i in fronts[opt]) for opt in OPTIMIZERS}
    adamw_front = [points["adamw"][i] for i in fronts["adamw"]]
    matched = sum(weakly_dominated(p, points["muon"]) for p in adamw_front)
    return ParetoFronts(on_front["muon"], on_front["adamw"], (matched, len(adamw_front)))


def _claim(ratios: Sequence[Ratio], pareto: ParetoFronts) -> Claim:
    batch_sizes = [r.batch_size for r in ratios if r.ratio is not None]
    measured = [r.ratio for r in ratios if r.ratio is not None]
    return Claim(
        ratios_above_one=(sum(v > 1 for v in measured), len(ratios)),
        trend_per_doubling=ratio_trend(batch_sizes, measured),
        mean_ratio=float(np.mean(measured)) if measured else None,
        adamw_front_matched_by_muon=pareto.adamw_front_matched_by_muon,
    )


def _notes(cells: Sequence[Cell], target: float) -> tuple[str, ...]:
    """What the numbers cannot say on their own: first each lr sweep's, then each crossing's."""
    notes = []
    for c in cells:
        label = f"{c.optimizer} at batch {c.batch_size}"
        if c.sweep.best_lr is None:
            notes.append(f"{label}: no lr completed on every seed, so it has no time to target")
        elif c.sweep.best_lr_on_edge:
            notes.append(f"{label}: the best lr {c.sweep.best_lr:g} is on the edge of its grid; "
                         "the optimum may lie beyond it")
    for c in cells:
        label = f"{c.optimizer} at batch {c.batch_size}"
        losses = c.sweep.curve.val_loss
        if c.crossing.tokens_to_target is None and losses:
            notes.append(f"{label}: never reached the target {target:.4f} (lowest {min(losses):.4f})")
        elif c.crossing.censored:
            notes.append(f"{label}: already below the target at its first evaluation, so its time to target "
                         "is an upper bound; raise evals")
    return tuple(notes)
