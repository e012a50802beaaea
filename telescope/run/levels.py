"""What one level runs: its grid's points, or an Optuna sampler's asks inside its box.

Both sit behind one small protocol, so the controller never asks which kind a level is:

    level = level_sampler(spec, pending, rows, sweep_dir)
    for trial in level.trials(): ...        # what to run now (lazily: Optuna asks as slots free)
    level.recorded(trial, row)              # a trial's row has landed in the ledger
    level.stall_reason                      # why it had nothing left to run, if it knows

The registry maps each sampler name of telescope.spec.samplers to its class.

An Optuna level spends its budget on *distinct* points. The ledger says which points the level
has (by value, whatever trial number they came under); a point the sampler proposes again (a
resumed sampler, a saturated box) is told the loss the level already knows and never run twice,
and a point recorded for only some seeds has just its missing seeds run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from telescope.run.samplers import LevelStudy
from telescope.spec.samplers import SAMPLERS
from telescope.spec.sweep import SweepSpec
from telescope.state import PendingStep, PlannedTrial, plan_trial, point_key, row_loss

# A sampler that proposes this many points the level already has, per point of budget, is taken
# to have nothing new to offer in the box; the controller then stops the sweep with the reason.
_REPEATS_PER_POINT = 20


class LevelSampler(Protocol):
    stall_reason: str | None

    def trials(self) -> Iterator[PlannedTrial]: ...

    def recorded(self, trial: PlannedTrial, row: Mapping[str, Any]) -> None: ...


class GridLevel:
    """The level's grid points x seeds; replay already knows which are missing."""

    def __init__(self, spec: SweepSpec, pending: PendingStep, rows: Mapping[str, Mapping[str, Any]],
                 sweep_dir: Path):
        self.pending = pending
        self.stall_reason: str | None = None

    def trials(self) -> Iterator[PlannedTrial]:
        return iter(self.pending.missing)

    def recorded(self, trial: PlannedTrial, row: Mapping[str, Any]) -> None:
        pass


@dataclass
class _Point:
    number: int  # the Optuna trial number the point was first asked under (the ledger's sampler_trial)
    point: dict[str, float]
    losses: dict[int, float] = field(default_factory=dict)  # seed -> ranking loss
    waiting: set[int] = field(default_factory=set)  # study trials to tell once every seed is in


class OptunaLevel:
    """Ask/tell against the level's study, with the ledger as the judge of what is done."""

    def __init__(self, spec: SweepSpec, pending: PendingStep, rows: Mapping[str, Mapping[str, Any]],
                 sweep_dir: Path):
        step = pending.step
        self.spec, self.pending = spec, pending
        self.seeds = spec.seeds
        self.stall_reason: str | None = None
        log_axes = [a.name for a in spec.axes if a.scale == "log"]
        self.study = LevelStudy(sweep_dir, step.level, spec.sampler(step.level), pending.budget_points,
                                step.grid.box(), log_axes, seed=spec.seeds[0])
        self.points: dict[tuple, _Point] = {}
        for t in sorted(pending.recorded, key=lambda t: t.sampler_trial):
            p = self.points.setdefault(point_key(t.point), _Point(t.sampler_trial, t.point))
            p.losses[t.seed] = row_loss(rows[t.trial_id])
            p.waiting.add(t.sampler_trial)

    def trials(self) -> Iterator[PlannedTrial]:
        step = self.pending.step
        # The study's own asks: told if the ledger completed their point; re-run if it never saw them.
        unseen: list[tuple[int, dict[str, float]]] = []
        for number, point in sorted(self.study.unfinished().items()):
            if set(point) != set(self.spec.axis_names):  # killed between the ask and its params
                self.study.abandon(number)
                continue
            key = point_key(point)
            if key in self.points:
                self.points[key].waiting.add(number)
            else:
                unseen.append((number, point))
        for p in self.points.values():
            self._tell_if_complete(p)
        # Points the ledger holds for only some seeds: just their missing seeds.
        for p in list(self.points.values()):
            for seed in self.seeds:
                if seed not in p.losses:
                    yield plan_trial(self.spec, step.level, step.width, p.point, seed, p.number)
        budget = self.pending.budget_points
        for number, point in unseen:
            if len(self.points) >= budget:
                break
            yield from self._start(number, point)
        repeats = 0
        while len(self.points) < budget:
            number, point = self.study.ask()
            key = point_key(point)
            if key in self.points:  # never run a point twice: tell it what the level knows
                self.points[key].waiting.add(number)
                self._tell_if_complete(self.points[key])
                repeats += 1
                if repeats > _REPEATS_PER_POINT * budget:
                    self.stall_reason = (
                        f"the {self.spec.samplers[step.level]} sampler proposed {repeats} points the level "
                        f"already has, with {len(self.points)} of {budget} distinct points found"
                    )
                    return
                continue
            yield from self._start(number, point)

    def _start(self, number: int, point: dict[str, float]) -> Iterator[PlannedTrial]:
        step = self.pending.step
        self.points[point_key(point)] = _Point(number, dict(point), waiting={number})
        for seed in self.seeds:
            yield plan_trial(self.spec, step.level, step.width, point, seed, number)

    def recorded(self, trial: PlannedTrial, row: Mapping[str, Any]) -> None:
        p = self.points[point_key(trial.point)]
        p.losses[trial.seed] = row_loss(row)
        self._tell_if_complete(p)

    def _tell_if_complete(self, p: _Point) -> None:
        if not all(seed in p.losses for seed in self.seeds):
            return
        losses = [p.losses[s] for s in self.seeds]
        mean = statistics.fmean(losses) if all(map(math.isfinite, losses)) else math.inf
        for number in sorted(p.waiting):
            self.study.tell(number, p.point, mean)
        p.waiting.clear()


LEVEL_SAMPLERS: dict[str, type[GridLevel] | type[OptunaLevel]] = {
    name: GridLevel if info.fixed_points else OptunaLevel for name, info in SAMPLERS.items()
}


def level_sampler(spec: SweepSpec, pending: PendingStep, rows: Mapping[str, Mapping[str, Any]],
                  sweep_dir: Path) -> LevelSampler:
    return LEVEL_SAMPLERS[pending.sampler](spec, pending, rows, sweep_dir)
