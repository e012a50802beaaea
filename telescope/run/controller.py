"""The sweep controller: replay the rule against the ledger, run what is missing, record, repeat.

    spec -> controller -> dispatcher (Ray) -> trial -> ledger -> (replay) -> next step

The controller keeps no state of its own beyond what the ledger holds: each round replays
Algorithm 1 against the ledger (telescope.state), runs the first step's missing trials as Ray
tasks, and appends each result to the ledger the moment it arrives. Killing it at any moment and
running it again (`resume`) therefore repeats no finished trial and reaches the same result.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from telescope.errors import SweepStopped
from telescope.run.devices import check_devices, trial_devices
from telescope.run.dispatch import Dispatcher, Job, Outcome
from telescope.run.outcomes import outcome_record
from telescope.store.directory import check_sweep_dir, load_sweep_dir, open_sweep_dir
from telescope.store.ledger import Ledger
from telescope.store.lock import SweepLock
from telescope.run.progress import Progress
from telescope.state import (
    PendingStep, PlannedTrial, SweepState, ledger_rows, point_id, recorded_spec, replay, row_loss, with_recorded_devices,
)
from telescope.run.levels import LevelSampler, level_sampler
from telescope.spec.sweep import SweepSpec, load_spec
from telescope.run.trainables import Launcher


def run_sweep(spec_path: str | Path, out: str | Path, *, address: str | None = None,
              num_cpus: int | None = None, progress: Progress | None = None) -> SweepState:
    """Start (or continue) the sweep of the spec at `spec_path`, writing to the directory `out`."""
    return run_spec(load_spec(spec_path), Path(spec_path).read_text(encoding="utf-8"), out, address=address,
                    num_cpus=num_cpus, progress=progress)


def run_spec(spec: SweepSpec, spec_text: str, out: str | Path, *, address: str | None = None,
             num_cpus: int | None = None, progress: Progress | None = None) -> SweepState:
    """Start (or continue) the sweep of `spec` (whose TOML is `spec_text`) in the directory `out`."""
    out = Path(out)
    check_sweep_dir(out, spec.fingerprint())  # refuse before the lock writes its holder's name
    with SweepLock(out):
        ledger = open_sweep_dir(out, spec_text, spec.fingerprint(), spec.name, devices=trial_devices(spec, address))
        spec = with_recorded_devices(spec, out, load_sweep_dir(out)[2])  # a directory's first devices stay its own
        progress = progress or Progress()
        _set_aside_damaged(ledger, progress)
        return _drive(spec, ledger, out, address, num_cpus, progress)


def resume_sweep(out: str | Path, *, address: str | None = None, num_cpus: int | None = None,
                 progress: Progress | None = None) -> SweepState:
    """Finish an interrupted sweep from its directory alone (the spec copy and the ledger)."""
    out = Path(out)
    progress = progress or Progress()
    load_sweep_dir(out)  # refuse a directory that is not a sweep before the lock creates anything
    with SweepLock(out):
        ledger, _, meta = load_sweep_dir(out)
        _set_aside_damaged(ledger, progress)
        spec = recorded_spec(out, meta)  # the rule and the devices that recorded it
        return _drive(spec, ledger, out, address, num_cpus, progress)


def _set_aside_damaged(ledger: Ledger, progress: Progress) -> None:
    """Damaged part files go to DIR/quarantine/ (never deleted), and their trials run again."""
    for item in ledger.quarantine_unreadable():
        progress.warn(item.note())


def _drive(spec: SweepSpec, ledger: Ledger, out: Path, address: str | None, num_cpus: int | None,
           progress: Progress) -> SweepState:
    rows = ledger_rows(ledger)
    state = replay(spec, rows)
    if state.complete:
        progress.note(f"sweep {spec.name!r} is already complete in {out}")
        return state
    if state.pending is not None:
        check_devices(spec, out, rows, state.pending.level, address, progress)
    launcher = Launcher.for_sweep(spec.trainable, out, address)  # the built-in GPT, or the user's code
    with Dispatcher(address, num_cpus=num_cpus, max_retries=spec.max_retries,
                    runtime_env=launcher.runtime_env) as dispatcher:
        display = _Display(progress, rows)
        reported = len(state.levels)
        while state.pending is not None:
            pending = state.pending
            display.begin(pending, len(spec.seeds))
            level = level_sampler(spec, pending, rows, out)
            recorder = _Recorder(spec, ledger, rows, level, display, launcher)
            recorded_before = len(rows)
            dispatcher.run(recorder.jobs(), recorder.record)
            if recorder.submitted == 0 and len(rows) == recorded_before:
                # Replaying an unchanged ledger gives the same pending step: never loop on it.
                raise SweepStopped(spec.name, _stall(pending, level.stall_reason))
            state = replay(spec, rows)
            for done in state.levels[reported:]:
                progress.end_level("; ".join(done.notes[1:]))
            if len(state.levels) > reported or state.pending is None:
                ledger.compact()  # one part per level keeps every later read fast
            reported = len(state.levels)
    if state.stopped:
        raise SweepStopped(spec.name, state.stopped)
    return state


def _stall(pending: PendingStep, reason: str | None) -> str:
    step = pending.step
    return (f"level {step.level} (width {step.width}) made no progress: a round ran no trial and recorded "
            f"none ({reason or 'nothing was left to run, yet the level is not complete'}); "
            "nothing recorded is lost: report this with the sweep directory")


class _Display:
    """The progress display of the level being run, fed from the ledger's rows."""

    def __init__(self, progress: Progress, rows: Mapping[str, Mapping[str, Any]]):
        self.progress, self.rows = progress, rows
        self.level: int | None = None

    def begin(self, pending: PendingStep, n_seeds: int) -> None:
        step = pending.step
        self.progress.note(step.note)
        if step.level != self.level:
            self.level = step.level
            self.progress.start_level(step.level, step.width, pending.budget_points * n_seeds, n_seeds)
            for t in pending.recorded:
                self.show(t, self.rows[t.trial_id], was_running=False)
        else:  # a widening of the same level
            self.progress.grow_level(len(pending.missing))

    def submitted(self) -> None:
        self.progress.submitted()

    def show(self, t: PlannedTrial, row: Mapping[str, Any], *, was_running: bool) -> None:
        self.progress.record(str(row["status"]), row_loss(row), t.point, was_running=was_running)


class _Recorder:
    """Turns a level's trials into jobs, and each outcome into one ledger row."""

    def __init__(self, spec: SweepSpec, ledger: Ledger, rows: dict[str, dict[str, Any]],
                 level: LevelSampler, display: _Display, launcher: Launcher):
        self.spec, self.ledger, self.rows, self.level, self.display = spec, ledger, rows, level, display
        self.launcher = launcher
        self.in_flight: dict[str, PlannedTrial] = {}
        self.submitted = 0

    def jobs(self) -> Iterator[Job]:
        for t in self.level.trials():
            resources = self.spec.resources[t.level]
            # Ray reuses worker processes across tasks, so torch's thread count must come from the
            # task's own CPUs, not from the OMP_NUM_THREADS the worker was started with.
            threads = max(1, int(resources.num_cpus))
            job = self.launcher.job(t.trial_id, t.config.replace(num_threads=threads), t.point, resources,
                                    time_limit_s=self.spec.time_limit_s, max_retries=self.spec.max_retries)
            self.in_flight[t.trial_id] = t
            self.submitted += 1
            self.display.submitted()
            yield job

    def record(self, outcome: Outcome) -> None:
        t = self.in_flight.pop(outcome.key)
        record = outcome_record(
            t.trial_id, outcome, axes=t.point,
            columns={"level": t.level, "width": t.config.width, "seed": t.seed, "sampler_trial": t.sampler_trial,
                     "point_id": point_id(t.level, t.point)},
            metrics=self.spec.trainable.metrics, workers=self.spec.resources[t.level].workers,
        )
        self.ledger.append([record])
        self.rows[t.trial_id] = record.row
        self.display.show(t, record.row, was_running=True)
        self.level.recorded(t, record.row)
