"""What `device = "auto"` means for a sweep's trials, decided by the controller before any id is made.

A trial's id fingerprints its config, device included, and the device decides what the trial
computes: the engine trains in fp32 on a CPU and under bf16 autocast on CUDA, with another random
init stream. So "auto" is resolved per level to what an explicit setting would say ("cpu" or
"cuda") when the sweep directory is created, and recorded in its sweep.json; every later run,
resume, status and export replays the recorded devices (telescope.state.recorded_spec). Trial
ids are then those of the explicit setting, and one directory never holds trials of two kinds
under one id.

A level's trials run on CUDA when they ask Ray for GPUs, or when they run on this machine (a local
Ray, no address) and torch sees a GPU here; on the CPU otherwise. On a machine of another kind a
sweep keeps its recorded devices: trials recorded as CPU stay on the CPU, and trials recorded as
CUDA that this machine cannot give a GPU are refused in one line, before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from telescope.errors import ConfigError
from telescope.run.progress import Progress
from telescope.spec.sweep import SweepSpec
from telescope.train.trial import local_device_kind

PRECISION = {"cpu": "fp32", "cuda": "bf16 autocast"}  # what the trial engine computes in on each


def trial_devices(spec: SweepSpec, address: str | None) -> tuple[str, ...]:
    """The device each level's trials run on from this machine: the spec's, or "auto" resolved."""
    if spec.fixed.device != "auto":
        return (spec.fixed.device,) * spec.n_levels
    # Ray hands a task that asks for no GPU the GPUs of its node; only a local Ray's node is known here.
    local_gpu = address is None and local_device_kind() == "cuda"
    return tuple("cuda" if r.num_gpus > 0 or local_gpu else "cpu" for r in spec.resources)


def check_devices(spec: SweepSpec, out: Path, rows: Mapping[str, Mapping[str, Any]], first_level: int,
                  address: str | None, progress: Progress) -> None:
    """Refuse (ConfigError) to run levels `first_level` on of a sweep whose recorded devices this
    machine cannot run; say so when it runs them on a kind it would not have chosen itself."""
    if spec.fixed.device != "auto":
        return  # explicit: the spec says what every trial runs on, here as anywhere
    here = trial_devices(spec, address)
    if spec.devices is None:
        _check_unrecorded(out, rows, here)
        return
    for level in range(first_level, spec.n_levels):
        recorded = spec.devices[level]
        if recorded == "cuda" and here[level] == "cpu":
            raise ConfigError(
                str(out),
                f'its level-{level} trials run on cuda ({PRECISION["cuda"]}), as device = "auto" resolved when the '
                "sweep started, and their ids say so; this machine has no GPU for them: resume on a GPU "
                "machine (or with --address to a cluster whose trials ask for GPUs), or start over with a new --out",
            )
    if any(spec.devices[level] != here[level] for level in range(first_level, spec.n_levels)):
        progress.note(f'device = "auto": trials run on cpu ({PRECISION["cpu"]}) as recorded when the sweep started, '
                      "not on this machine's GPU")


def _check_unrecorded(out: Path, rows: Mapping[str, Mapping[str, Any]], here: Sequence[str]) -> None:
    """A directory made before devices were recorded: its ids hold "auto" itself, so only its
    rows' `device` column says where they ran. Refuse to add trials of another kind to it."""
    for row in rows.values():
        device = str(row.get("device") or "")
        if not device:
            continue  # a trial that failed before it reached a device
        ran_on = "cuda" if device.startswith("cuda") else "cpu"
        level = int(row["level"])
        if ran_on != here[level]:
            raise ConfigError(
                str(out),
                f'its level-{level} trials ran on {ran_on} ({PRECISION[ran_on]}) under device = "auto", and '
                f"their ids do not say so; here they would run on {here[level]} ({PRECISION[here[level]]}): "
                f"resume on a {ran_on} machine, or start over with a new --out",
            )
