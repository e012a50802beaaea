"""Replay Algorithm 1 against what the ledger holds.

The telescoping rule (telescope.core.rule.telescope) is a generator that asks for the results of
one step at a time. Replaying it against the ledger's rows answers every step whose trials are all
recorded and stops at the first step that still needs work. Everything about a sweep's state is
derived this way, so the controller (which then runs the missing trials), `status` and `export`
can never disagree, and resuming after a crash is just replaying again.

Grid levels: a step's trials are its points x the spec's seeds, each with a deterministic id.
Sampler levels (Optuna): a step asks for len(step.points) points inside the level's box; the
level is complete when that many distinct points have a row for every seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from telescope.core.contract import TrialConfig, trial_id
from telescope.errors import ConfigError
from telescope.spec.sweep import SweepSpec, load_spec
from telescope.store.directory import SPEC_FILE, load_sweep_dir
from telescope.store.ledger import Ledger
from telescope.core.rule import LevelResult, Observation, Step, telescope


@dataclass(frozen=True)
class PlannedTrial:
    """One trial a step needs: where it sits in the sweep and what it runs."""

    trial_id: str
    level: int
    seed: int
    point: dict[str, float]
    config: TrialConfig
    sampler_trial: int | None = None  # the Optuna trial number on sampler levels


@dataclass
class PendingStep:
    """The first step of the sweep that still lacks results."""

    step: Step
    sampler: str  # "grid" or an Optuna sampler name
    recorded: list[PlannedTrial]  # this step's trials already in the ledger
    missing: list[PlannedTrial]  # grid steps: the trials still to run (sampler steps ask live)
    budget_points: int  # points the step runs in all

    @property
    def level(self) -> int:
        return self.step.level


@dataclass
class SweepState:
    spec: SweepSpec
    levels: list[LevelResult] = field(default_factory=list)  # the completed levels, in order
    pending: PendingStep | None = None  # None when the sweep is complete or stopped
    stopped: str | None = None  # why the rule cannot go on (e.g. every trial of a level failed)

    @property
    def complete(self) -> bool:
        return self.pending is None and self.stopped is None

    @property
    def optimum(self):
        """The optimum of the widest completed level (None before level 0 completes)."""
        return self.levels[-1].optimum if self.levels else None




def row_loss(row: Mapping[str, Any]) -> float:
    """A ledger row's loss for ranking: diverged and failed trials rank worse than any finite loss."""
    loss = row.get("final_loss")
    if row.get("status") != "completed" or loss is None or not math.isfinite(loss):
        return math.inf
    return float(loss)


def plan_trial(spec: SweepSpec, level: int, width: int, point: Mapping[str, float], seed: int,
               sampler_trial: int | None = None) -> PlannedTrial:
    config = spec.trial_config(width, point, seed)
    return PlannedTrial(trial_id(level, config), level, seed, dict(point), config, sampler_trial)


def replay(spec: SweepSpec, rows: Mapping[str, Mapping[str, Any]]) -> SweepState:
    """Answer the rule's steps from `rows` (trial_id -> ledger row) until one lacks results."""
    rows_by_level: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows.values():
        rows_by_level.setdefault(int(row["level"]), []).append(row)
    gen = telescope(spec.axes, spec.widths, min_points=spec.min_points, max_widenings=spec.max_widenings)
    step = next(gen)
    while True:
        sampler = spec.samplers[step.level]
        budget = len(step.points)
        if sampler == "grid":
            wanted = [plan_trial(spec, step.level, step.width, p, s) for p in step.points for s in spec.seeds]
            recorded = [t for t in wanted if t.trial_id in rows]
            missing = [t for t in wanted if t.trial_id not in rows]
            done = not missing
        else:
            recorded = _sampler_trials(spec, step, rows_by_level.get(step.level, []))
            complete = _complete_points(recorded, len(spec.seeds))
            missing = []
            done = len(complete) >= budget
            if done:  # the first `budget` points by trial number; a surplus ask (after a crash) is ignored
                keep = set(sorted(complete)[:budget])
                recorded = [t for t in recorded if t.sampler_trial in keep]
        if not done:
            gen.close()
            return SweepState(spec, list(step.completed), PendingStep(step, sampler, recorded, missing, budget))
        observations = [Observation(t.point, t.seed, row_loss(rows[t.trial_id])) for t in recorded]
        try:
            step = gen.send(observations)
        except StopIteration as finished:
            return SweepState(spec, list(finished.value.levels), None)
        except ConfigError as err:  # the rule found no way on; the ledger still says how far it got
            return SweepState(spec, list(step.completed), None, stopped=str(err))


def _sampler_trials(spec: SweepSpec, step: Step, level_rows: list[Mapping[str, Any]]) -> list[PlannedTrial]:
    trials = []
    for row in level_rows:
        number = row.get("sampler_trial")
        if number is None or (isinstance(number, float) and math.isnan(number)):
            continue
        point = {name: float(row[name]) for name in spec.axis_names}
        config = spec.trial_config(step.width, point, int(row["seed"]))
        trials.append(PlannedTrial(row["trial_id"], step.level, config.seed, point, config, int(number)))
    return trials


def _complete_points(trials: list[PlannedTrial], n_seeds: int) -> set[int]:
    seeds_by_point: dict[int, set[int]] = {}
    for t in trials:
        seeds_by_point.setdefault(t.sampler_trial, set()).add(t.seed)  # type: ignore[arg-type]
    return {n for n, seeds in seeds_by_point.items() if len(seeds) >= n_seeds}


def sweep_state(out: str | Path) -> tuple[SweepSpec, Ledger, SweepState]:
    """Read-only view of a sweep directory, for status, export and reports (no lock needed)."""
    ledger, _, _ = load_sweep_dir(out)
    spec = load_spec(Path(out) / SPEC_FILE)
    return spec, ledger, replay(spec, ledger_rows(ledger))


def ledger_rows(ledger: Ledger) -> dict[str, dict[str, Any]]:
    return {row["trial_id"]: row for row in ledger.trials().to_dict("records")}
