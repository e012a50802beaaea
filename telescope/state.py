"""Replay Algorithm 1 against what the ledger holds.

The telescoping rule (telescope.core.rule.telescoping_steps) is a generator that asks for the results of
one step at a time. Replaying it against the ledger's rows answers every step whose trials are all
recorded and stops at the first step that still needs work. Everything about a sweep's state is
derived this way, so the controller (which then runs the missing trials), `status` and `export`
can never disagree, and resuming after a crash is just replaying again.

Grid levels: a step's trials are its points x the spec's seeds, each with a deterministic id.
A ring (widening at level 0, `max_shifts` rings at later levels) is one more step of the same
level whose points are only the new ones, so a replay stopped inside a ring asks for just its
missing trials and the old points' results are reused as they are.
Sampler levels (Optuna): a step asks for len(step.points) points inside the level's box; the
level is complete when that many *distinct* points (by value, whatever Optuna trial numbers they
came under) have a row for every seed. Counting distinct points from the ledger, never the
study's asks, is what keeps a resumed level from chasing a budget that repeated asks used up.
If a level finds no optimum (every trial diverged or failed), the state says why, with the
trials' own errors.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from telescope.core.contract import TrialConfig, trial_id
from telescope.core.numbers import round_sig
from telescope.errors import LedgerError, NoOptimumError
from telescope.spec.sweep import SweepSpec, load_recorded_spec
from telescope.store.directory import META_FILE, SPEC_FILE, load_sweep_dir
from telescope.store.ledger import Ledger
from telescope.core.rule import LevelResult, Observation, Step, telescoping_steps


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
    gen = telescoping_steps(spec.axes, spec.widths, min_points=spec.min_points, max_widenings=spec.max_widenings,
                            max_shifts=spec.max_shifts, centre=spec.centre)
    step = next(gen)
    while True:
        sampler = spec.samplers[step.level]
        budget = len(step.points)
        if spec.sampler(step.level).fixed_points:
            wanted = [plan_trial(spec, step.level, step.width, p, s) for p in step.points for s in spec.seeds]
            recorded = [t for t in wanted if t.trial_id in rows]
            missing = [t for t in wanted if t.trial_id not in rows]
            done = not missing
        else:
            recorded = _sampler_trials(spec, step, rows_by_level.get(step.level, []))
            complete = complete_points(recorded, spec.seeds)
            missing = []
            done = len(complete) >= budget
            if done:  # the first `budget` points by trial number; a surplus ask (after a crash) is ignored
                keep = set(sorted(complete, key=complete.get)[:budget])
                recorded = [t for t in recorded if point_key(t.point) in keep]
        if not done:
            gen.close()
            return SweepState(spec, list(step.completed), PendingStep(step, sampler, recorded, missing, budget))
        observations = [Observation(t.point, t.seed, row_loss(rows[t.trial_id])) for t in recorded]
        try:
            step = gen.send(observations)
        except StopIteration as finished:
            return SweepState(spec, list(finished.value.levels), None)
        except NoOptimumError as err:  # the rule found no way on; the ledger still says how far it got
            level_rows = rows_by_level.get(step.level, [])
            return SweepState(spec, list(step.completed), None, stopped=str(_with_causes(err, level_rows)))


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


def point_key(point: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """A point's identity at the precision trial ids are made at: two asks of the same values are
    one point, whatever their Optuna trial numbers."""
    return tuple((name, round_sig(float(v))) for name, v in sorted(point.items()))


def point_id(level: int, point: Mapping[str, float]) -> str:
    """The ledger's `point_id`: one id per point of a level, shared by its seeds' rows, so a
    reader groups seeds without matching floats."""
    digest = hashlib.sha256(json.dumps(point_key(point)).encode()).hexdigest()[:12]
    return f"L{level}-{digest}"


def complete_points(trials: list[PlannedTrial], seeds: tuple[int, ...]) -> dict[tuple, int]:
    """Distinct points that have a row for every seed -> the lowest Optuna trial number they
    were recorded under (the order in which the level keeps them)."""
    seeds_by_point: dict[tuple, set[int]] = {}
    first: dict[tuple, int] = {}
    for t in trials:
        key = point_key(t.point)
        seeds_by_point.setdefault(key, set()).add(t.seed)
        first[key] = min(first.get(key, t.sampler_trial), t.sampler_trial)  # type: ignore[type-var]
    return {key: first[key] for key, got in seeds_by_point.items() if set(seeds) <= got}


def _with_causes(err: NoOptimumError, level_rows: list[Mapping[str, Any]]) -> NoOptimumError:
    """The rule's NoOptimumError with the level's own tally: how many trials diverged and failed,
    and the failed trials' most common errors, so the message blames the real cause."""
    statuses = [row.get("status") for row in level_rows]
    errors: dict[str, int] = {}
    for row in level_rows:
        if row.get("status") == "failed":
            text = str(row.get("error") or "no error recorded")
            errors[text] = errors.get(text, 0) + 1
    common = dict(sorted(errors.items(), key=lambda kv: -kv[1]))
    return NoOptimumError(err.level, err.width, diverged=statuses.count("diverged"),
                          failed=statuses.count("failed"), errors=common)


def sweep_state(out: str | Path) -> tuple[SweepSpec, Ledger, SweepState]:
    """Read-only view of a sweep directory, for status, export and reports (no lock needed)."""
    ledger, _, meta = load_sweep_dir(out)
    spec = recorded_spec(out, meta)
    return spec, ledger, replay(spec, ledger_rows(ledger))


def recorded_spec(out: str | Path, meta: Mapping[str, Any]) -> SweepSpec:
    """A sweep directory's spec (its sweep.json is `meta`) as it recorded its ledger: the rule
    (load_recorded_spec) and the devices "auto" resolved to, so trial ids replay without torch."""
    return with_recorded_devices(load_recorded_spec(Path(out) / SPEC_FILE, meta["spec_fingerprint"]), out, meta)


def with_recorded_devices(spec: SweepSpec, out: str | Path, meta: Mapping[str, Any]) -> SweepSpec:
    """`spec` with the devices its directory's sweep.json records; as it is for a directory made
    before they were recorded (its ids were made with device = "auto" unresolved)."""
    devices = meta.get("devices")
    if devices is None:
        return spec
    if len(devices) != spec.n_levels:
        raise LedgerError(str(Path(out) / META_FILE), f"records {len(devices)} devices for {spec.n_levels} levels; "
                          "restore it from a copy or start a new sweep")
    return spec.on_devices(devices)


def ledger_rows(ledger: Ledger) -> dict[str, dict[str, Any]]:
    return {row["trial_id"]: row for row in ledger.trials().to_dict("records")}
