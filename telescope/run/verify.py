"""Run a verify scan (planned by telescope.read.verify) on Ray, into the scan's own ledger.

The scan's directory is a telescope directory of kind "verify", written under its SweepLock like a
sweep's: each trial's row is appended the moment it ends, so a scan killed at any moment (SIGTERM
and Ctrl-C unwind through the Dispatcher, which cancels what is running) and run again repeats no
recorded trial. Trial ids are content-addressed, so a scan with every trial recorded starts no Ray
(and loads neither Ray nor torch: a re-run only to redraw the verdict takes seconds).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from telescope.run.progress import Progress
from telescope.spec.resources import Resources
from telescope.state import PlannedTrial, ledger_rows, point_id, row_loss
from telescope.store.directory import SPEC_FILE, open_sweep_dir, write_spec
from telescope.store.ledger import Ledger
from telescope.store.lock import SweepLock

if TYPE_CHECKING:
    from telescope.run.dispatch import Outcome


class Scan(Protocol):
    """What running a scan needs of its plan (telescope.read.verify.ScanPlan)."""

    kind: str
    directory: Path
    name: str
    fingerprint: str
    width: int
    trials: Sequence[PlannedTrial]
    resources: Resources
    time_limit_s: float | None
    max_retries: int

    @property
    def text(self) -> str: ...


def run_scan(scan: Scan, *, address: str | None = None, num_cpus: int | None = None,
             progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Run the scan's trials its ledger lacks; return the ledger's rows (trial_id -> row)."""
    progress = progress or Progress()
    out = scan.directory
    with SweepLock(out):
        ledger = open_sweep_dir(out, scan.text, scan.fingerprint, scan.name, kind=scan.kind)
        if (out / SPEC_FILE).read_text(encoding="utf-8") != scan.text:
            write_spec(out, scan.text)  # the copy says which scan was run last
        for item in ledger.quarantine_unreadable():
            progress.warn(item.note())
        recorded = ledger.recorded_ids()  # any status: a diverged trial would diverge again
        missing = {t.trial_id: t for t in scan.trials if t.trial_id not in recorded}
        progress.note(f"verify {scan.name!r} at width {scan.width}: {len(scan.trials)} trials, "
                      f"{len(missing)} to run, recorded in {out}")
        if missing:
            _run(scan, missing, ledger, address, num_cpus, progress)
        return ledger_rows(ledger)


def _run(scan: Scan, missing: dict[str, PlannedTrial], ledger: Ledger, address: str | None, num_cpus: int | None,
         progress: Progress) -> None:
    from telescope.run.dispatch import Dispatcher, Job
    from telescope.run.outcomes import outcome_record
    from telescope.train.trial import run_trial

    # Ray reuses worker processes, so torch's thread count must come from the task's own CPUs.
    threads = max(1, int(scan.resources.num_cpus))

    def jobs() -> Iterator[Job]:
        for t in missing.values():
            progress.submitted()
            yield Job(t.trial_id, run_trial, t.config.replace(num_threads=threads), scan.resources,
                      scan.time_limit_s)

    def record(outcome: Outcome) -> None:
        t = missing[outcome.key]
        rec = outcome_record(t.trial_id, outcome, axes=t.point,
                             columns={"level": t.level, "width": t.config.width, "seed": t.seed,
                                      "point_id": point_id(t.level, t.point)})
        ledger.append([rec])
        progress.record(str(rec.row["status"]), row_loss(rec.row), t.point, was_running=True)

    progress.start_level(next(iter(missing.values())).level, scan.width, len(missing))
    with Dispatcher(address, num_cpus=num_cpus, max_retries=scan.max_retries) as dispatcher:
        dispatcher.run(jobs(), record)
    progress.end_level(f"{len(missing)} trials recorded")
    ledger.compact()
