"""Running a study: the trials its ledger lacks, on Ray, then the analysis and its files.

The study directory is a sweep directory of kind "compare" (telescope.store.directory), written
under its SweepLock like a sweep's. Trial ids are content-addressed, so a rerun, a resumed run or a
spec grown by lrs, batch sizes or seeds runs only the trials not yet recorded (in any status: a
failed or diverged trial is not rerun), and the analysis is redone from the whole ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from telescope.errors import ConfigError
from telescope.run.dispatch import Dispatcher, Job, Outcome
from telescope.run.outcomes import outcome_record
from telescope.run.progress import Progress
from telescope.state import row_loss
from telescope.store.directory import SPEC_FILE, directory_kind, load_sweep_dir, open_sweep_dir, write_spec
from telescope.store.ledger import Ledger
from telescope.store.lock import SweepLock
from telescope.studies.compare.analysis import CompareTable, analyse
from telescope.studies.compare.figures import FIGURES, plot_compare
from telescope.studies.compare.results import write_result
from telescope.studies.compare.spec import KIND, LEVEL, CompareSpec, load_compare_spec
from telescope.train.trial import run_trial


def run_compare(spec_path: str | Path, out: str | Path, *, address: str | None = None,
                num_cpus: int | None = None, progress: Progress | None = None, plot: bool = True) -> CompareTable:
    """Run (or finish) the study of the spec at `spec_path` in directory `out`; return its table.

    Writes out/compare.json and, with `plot`, the figures named in FIGURES.
    """
    spec = load_compare_spec(spec_path)
    text = Path(spec_path).read_text(encoding="utf-8")
    out = Path(out)
    progress = progress or Progress()
    _refuse_other_dir(out, spec)
    with SweepLock(out):
        ledger = open_sweep_dir(out, text, spec.fingerprint(), spec.name, kind=KIND)
        if (out / SPEC_FILE).read_text(encoding="utf-8") != text:
            write_spec(out, text)  # grids, target, ...: the copy says what was analysed
        _run_missing(spec, ledger, address, num_cpus, progress)
        table = analyse(spec, ledger.trials(), ledger.curves())
        if plot:
            table = replace(table, figures=plot_compare(table.to_dict(), out))
        else:  # figures of an earlier analysis would disagree with the new compare.json
            for name in FIGURES.values():
                (out / name).unlink(missing_ok=True)
        write_result(out, table)
    return table


def _refuse_other_dir(out: Path, spec: CompareSpec) -> None:
    """Say plainly what an unusable existing directory is. open_sweep_dir refuses both too, but
    its messages speak of sweeps and point at `telescope resume`."""
    kind = directory_kind(out)
    if kind is None:  # absent, empty, or not telescope's: open_sweep_dir creates or refuses it
        return
    if kind != KIND:
        raise ConfigError(str(out), f"is a telescope {kind} directory, not a compare study's; use a new --out")
    if load_sweep_dir(out, kind=KIND)[2]["spec_fingerprint"] != spec.fingerprint():
        raise ConfigError(
            str(out),
            "holds another compare study (other model, data, training settings, tokens or evaluation); "
            "use a new --out (lr grids, batch sizes, seeds, target_loss, name and resources may change)",
        )


def _run_missing(spec: CompareSpec, ledger: Ledger, address: str | None, num_cpus: int | None,
                 progress: Progress) -> None:
    trials = spec.trials()
    recorded = ledger.recorded_ids()  # any status: a failed or diverged trial is not rerun either
    missing = [t for t in trials if t.trial_id not in recorded]
    progress.note(
        f"compare {spec.name!r}: muon vs adamw at width {spec.width}, batch sizes "
        f"{', '.join(map(str, spec.batch_sizes))}, {spec.tokens:,} tokens per run; "
        f"{len(trials)} trials, {len(missing)} to run"
    )
    if not missing:
        return
    # Longest first, so the last trials to finish are short ones: small batches take the most
    # steps for the same tokens, and Muon's steps cost more than AdamW's.
    missing.sort(key=lambda t: (t.batch_size, t.optimizer != "muon"))
    by_id = {t.trial_id: t for t in missing}
    # Ray reuses worker processes, so torch's thread count must come from the task's own CPUs.
    threads = max(1, int(spec.resources.num_cpus))
    jobs = (Job(t.trial_id, run_trial, t.config.replace(num_threads=threads), spec.resources, spec.time_limit_s)
            for t in missing)

    def record(outcome: Outcome) -> None:
        t = by_id[outcome.key]
        rec = outcome_record(
            t.trial_id, outcome, axes={"lr": t.lr},
            columns={"level": LEVEL, "width": t.config.width, "seed": t.seed,
                     "optimizer": t.optimizer, "batch_size": t.batch_size},
        )
        ledger.append([rec])
        progress.record(str(rec.row["status"]), row_loss(rec.row), {"lr": t.lr, "batch": t.batch_size},
                        was_running=True)

    progress.start_level(LEVEL, spec.width, len(missing))
    with Dispatcher(address, num_cpus=num_cpus, max_retries=spec.max_retries) as dispatcher:
        dispatcher.run(_counted(jobs, progress), record)
    progress.end_level(f"{len(missing)} trials recorded in {ledger.path}")
    ledger.compact()


def _counted(jobs: Iterable[Job], progress: Progress) -> Iterator[Job]:
    """The jobs, each counted as submitted when the dispatcher takes it."""
    for job in jobs:
        progress.submitted()
        yield job
