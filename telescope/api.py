"""The front door: one `Sweep` per sweep directory, with symmetric verbs.

    sweep = Sweep.create("sweeps/demo.toml", "runs/demo")   # or a SweepSpec object
    sweep.plan()                                             # levels, trials, FLOPs; runs nothing
    state = sweep.run()                                      # Ray and torch load here, not before
    Sweep.open("runs/demo").resume()                         # after Ctrl-C, SIGTERM, SIGKILL
    Sweep.open("runs/demo").status()                         # reading needs neither Ray nor torch
    Sweep.open("runs/demo").export(width=1024)
    Sweep.open("runs/demo").report("runs/demo-report")

The CLI is a thin layer over these verbs, and a notebook calls the same ones. Everything a verb
knows comes from the directory (its spec copy and ledger), so `open(dir)` in another process, on
another machine, or after a crash sees the same sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from telescope.spec.plan import Plan, plan
from telescope.spec.preflight import preflight
from telescope.spec.sweep import SweepSpec, load_spec
from telescope.state import SweepState, recorded_spec, sweep_state
from telescope.store.directory import check_sweep_dir, load_sweep_dir

if TYPE_CHECKING:
    from telescope.read.report.numbers import ReportData
    from telescope.run.progress import Progress
    from telescope.store.ledger import Ledger


class Sweep:
    """A sweep directory and the spec it runs. Build it with `create` or `open`."""

    def __init__(self, directory: str | Path, spec: SweepSpec, spec_text: str):
        self.directory = Path(directory)
        self.spec = spec
        self._spec_text = spec_text

    def __repr__(self) -> str:
        return f"Sweep({self.spec.name!r}, {str(self.directory)!r})"

    @classmethod
    def create(cls, spec: str | Path | SweepSpec, directory: str | Path) -> "Sweep":
        """A sweep of `spec` (a TOML path or a SweepSpec) in `directory`: new, or this spec's own
        directory (running it again is a no-op for recorded trials). Refuses another spec's or a
        non-sweep directory, or a corpus no trial could read (telescope.spec.preflight), in one
        line, touching nothing; writes nothing until `run`."""
        if isinstance(spec, SweepSpec):
            parsed, text = spec, spec.to_toml()
        else:
            parsed, text = load_spec(spec), Path(spec).read_text(encoding="utf-8")
        check_sweep_dir(directory, parsed.fingerprint())
        preflight(parsed)
        return cls(directory, parsed, text)

    @classmethod
    def open(cls, directory: str | Path) -> "Sweep":
        """An existing sweep directory, from its spec copy alone (and the devices it recorded)."""
        _, text, meta = load_sweep_dir(directory)
        return cls(directory, recorded_spec(directory, meta), text)

    # -- running (Ray and torch are imported by these verbs only)

    def run(self, *, address: str | None = None, num_cpus: int | None = None,
            progress: Progress | None = None) -> SweepState:
        """Run every missing trial until the sweep is complete; returns the final state."""
        from telescope.run.controller import run_spec

        return run_spec(self.spec, self._spec_text, self.directory, address=address, num_cpus=num_cpus,
                        progress=progress)

    def resume(self, *, address: str | None = None, num_cpus: int | None = None,
               progress: Progress | None = None) -> SweepState:
        """Finish an interrupted sweep from its directory alone."""
        from telescope.run.controller import resume_sweep

        preflight(self.spec)  # the corpus may have moved since the sweep started
        return resume_sweep(self.directory, address=address, num_cpus=num_cpus, progress=progress)

    # -- reading (Parquet, numpy and pandas; never torch, Ray or Optuna)

    def plan(self) -> Plan:
        return plan(self.spec)

    def state(self) -> SweepState:
        return sweep_state(self.directory)[2]

    def ledger(self) -> Ledger:
        return sweep_state(self.directory)[1]

    def status(self) -> dict[str, Any]:
        from telescope.read.status import sweep_status

        return sweep_status(self.directory)

    def export(self, width: int | None = None, *, extrapolate: bool = False,
               follow_drift: bool = True) -> dict[str, Any]:
        from telescope.read.export import export

        return export(self.directory, width=width, extrapolate=extrapolate, follow_drift=follow_drift)

    def report(self, out: str | Path, **options: Any) -> ReportData:
        """Figures and report.md in `out` (options: axes, coordcheck, compare; see make_report)."""
        from telescope.read.report import make_report

        return make_report(self.directory, out, **options)
