"""The sweep controller: replay the rule against the ledger, run what is missing, record, repeat.

    spec -> controller -> dispatcher (Ray) -> trial -> ledger -> (replay) -> next step

The controller keeps no state of its own beyond what the ledger holds: each round replays
Algorithm 1 against the ledger (telescope.state), runs the first step's missing trials as Ray
tasks, and appends each result to the ledger the moment it arrives. Killing it at any moment and
running it again (`resume`) therefore repeats no finished trial and reaches the same result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from telescope.errors import ConfigError
from telescope.run.dispatch import Dispatcher, Job, Outcome
from telescope.run.outcomes import outcome_record
from telescope.store.directory import SPEC_FILE, check_sweep_dir, load_sweep_dir, open_sweep_dir
from telescope.store.ledger import Ledger
from telescope.store.lock import SweepLock
from telescope.run.progress import Progress
from telescope.state import PendingStep, PlannedTrial, SweepState, ledger_rows, plan_trial, replay, row_loss
from telescope.run.samplers import LevelStudy
from telescope.spec.sweep import SweepSpec, load_spec
from telescope.train.trial import run_trial


def run_sweep(spec_path: str | Path, out: str | Path, *, address: str | None = None,
              num_cpus: int | None = None, progress: Progress | None = None) -> SweepState:
    """Start (or continue) the sweep of the spec at `spec_path`, writing to the directory `out`."""
    spec = load_spec(spec_path)
    spec_text = Path(spec_path).read_text()
    out = Path(out)
    check_sweep_dir(out, spec.fingerprint())  # refuse before the lock writes its holder's name
    with SweepLock(out):
        ledger = open_sweep_dir(out, spec_text, spec.fingerprint(), spec.name)
        return _drive(spec, ledger, out, address, num_cpus, progress or Progress())


def resume_sweep(out: str | Path, *, address: str | None = None, num_cpus: int | None = None,
                 progress: Progress | None = None) -> SweepState:
    """Finish an interrupted sweep from its directory alone (the spec copy and the ledger)."""
    out = Path(out)
    load_sweep_dir(out)  # refuse a directory that is not a sweep before the lock creates anything
    with SweepLock(out):
        ledger, _, _ = load_sweep_dir(out)
        return _drive(load_spec(out / SPEC_FILE), ledger, out, address, num_cpus, progress or Progress())


def _drive(spec: SweepSpec, ledger: Ledger, out: Path, address: str | None, num_cpus: int | None,
           progress: Progress) -> SweepState:
    rows = ledger_rows(ledger)
    state = replay(spec, rows)
    if state.complete:
        progress.note(f"sweep {spec.name!r} is already complete in {out}")
        return state
    with Dispatcher(address, num_cpus=num_cpus, max_retries=spec.max_retries) as dispatcher:
        recorder = _Recorder(spec, ledger, rows, progress)
        reported = len(state.levels)
        while state.pending is not None:
            recorder.begin(state.pending)
            dispatcher.run(recorder.jobs(state.pending, out), recorder.record)
            state = replay(spec, rows)
            for level in state.levels[reported:]:
                progress.end_level("; ".join(level.notes[1:]))
            if len(state.levels) > reported or state.pending is None:
                ledger.compact()  # one part per level keeps every later read fast
            reported = len(state.levels)
    if state.stopped:
        raise ConfigError("sweep", f"stopped: {state.stopped}")
    return state


class _Recorder:
    """Turns a pending step into jobs, and each outcome into one ledger row."""

    def __init__(self, spec: SweepSpec, ledger: Ledger, rows: dict[str, dict[str, Any]], progress: Progress):
        self.spec, self.ledger, self.rows, self.progress = spec, ledger, rows, progress
        self.in_flight: dict[str, PlannedTrial] = {}
        self.level: int | None = None
        self.study: LevelStudy | None = None

    def begin(self, pending: PendingStep) -> None:
        step = pending.step
        total = pending.budget_points * len(self.spec.seeds)
        if step.level != self.level:
            self.level = step.level
            self.progress.note(step.note)
            self.progress.start_level(step.level, step.width, total)
            for t in pending.recorded:
                self._show(t, self.rows[t.trial_id], was_running=False)
        else:  # a widening of the same level
            self.progress.note(step.note)
            self.progress.grow_level(len(pending.missing))

    def jobs(self, pending: PendingStep, out: Path) -> Iterator[Job]:
        if pending.sampler == "grid":
            trials: Iterator[PlannedTrial] = iter(pending.missing)
        else:
            trials = self._sampled(pending, out)
        resources = self.spec.resources[pending.level]
        # Ray reuses worker processes across tasks, so torch's thread count must come from the
        # task's own CPUs, not from the OMP_NUM_THREADS the worker was started with.
        threads = max(1, int(resources.num_cpus))
        for t in trials:
            self.in_flight[t.trial_id] = t
            self.progress.submitted()
            yield Job(t.trial_id, run_trial, t.config.replace(num_threads=threads), resources,
                      self.spec.time_limit_s)

    def _sampled(self, pending: PendingStep, out: Path) -> Iterator[PlannedTrial]:
        """Optuna levels: tell what the ledger knows, re-run unfinished asks, then ask for more."""
        step = pending.step
        log_axes = [a.name for a in self.spec.axes if a.scale == "log"]
        self.study = study = LevelStudy(out, step.level, pending.sampler, step.grid.box(), log_axes,
                                        seed=self.spec.seeds[0])
        for number in {t.sampler_trial for t in pending.recorded}:
            self._tell_if_complete(number)
        seeds = self.spec.seeds
        for number, point in sorted(study.unfinished().items()):
            for seed in seeds:
                t = plan_trial(self.spec, step.level, step.width, point, seed, number)
                if t.trial_id not in self.rows:
                    yield t
        while len(study.asked()) < pending.budget_points:
            number, point = study.ask()
            for seed in seeds:
                yield plan_trial(self.spec, step.level, step.width, point, seed, number)

    def record(self, outcome: Outcome) -> None:
        t = self.in_flight.pop(outcome.key)
        record = outcome_record(
            t.trial_id, outcome, axes=t.point,
            columns={"level": t.level, "width": t.config.width, "seed": t.seed, "sampler_trial": t.sampler_trial},
        )
        self.ledger.append([record])
        self.rows[t.trial_id] = record.row
        self._show(t, record.row, was_running=True)
        if t.sampler_trial is not None:
            self._tell_if_complete(t.sampler_trial)

    def _tell_if_complete(self, number: int | None) -> None:
        if self.study is None or number is None:
            return
        losses = [row_loss(r) for r in self.rows.values()
                  if r.get("level") == self.level and r.get("sampler_trial") == number]
        if len(losses) >= len(self.spec.seeds):
            self.study.tell(number, statistics.fmean(losses) if all(map(math.isfinite, losses)) else math.inf)

    def _show(self, t: PlannedTrial, row: Mapping[str, Any], *, was_running: bool) -> None:
        self.progress.record(str(row["status"]), row_loss(row), t.point, was_running=was_running)
