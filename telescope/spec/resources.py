"""What one trial asks Ray for: a `Resources` of CPUs and GPUs, checked against Ray's rules.

This module does not import Ray, so the spec can use it without pulling Ray in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from telescope.errors import ConfigError

__all__ = ["UNITS", "Resources"]

# Ray keeps resource quantities in fixed point with four decimals; doing the capacity arithmetic
# in the same units keeps 1 / 0.1 GPU from flooring to 9.
UNITS = 10_000


@dataclass(frozen=True)
class Resources:
    """What one job holds while it runs. Fractional GPUs pack several jobs on one GPU.

    `workers` > 1 makes the job a multi-worker trial: `num_cpus` and `num_gpus` are then what each
    of its `workers` processes holds (Ray Train's resources per worker)."""

    num_cpus: float = 1
    num_gpus: float = 0
    workers: int = 1

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            where = f"resources.{name}"
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(where, f"must be a number; got {value!r}")
            if value < 0:
                raise ConfigError(where, f"must be >= 0; got {value!r}")
            if value and abs(value * UNITS - round(value * UNITS)) > 1e-6:
                raise ConfigError(where, f"Ray counts resources to 4 decimals; got {value!r}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ConfigError(
                "resources.num_gpus",
                f"fractional GPUs > 1 for one trial cannot be packed; got {self.num_gpus!r}: use a fraction "
                "<= 1 (0.25 runs four trials per GPU) or a whole number",
            )
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise ConfigError("resources.workers", f"must be a whole number >= 1; got {self.workers!r}")
        if self.workers > 1 and 0 < self.num_gpus < 1:
            raise ConfigError(
                "resources.num_gpus",
                f"the {self.workers} workers of a trial need a whole GPU each (NCCL runs one rank per GPU); got "
                f"{self.num_gpus!r}: use num_gpus = 1, or workers = 1 to pack trials on a GPU",
            )
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise ConfigError(
                "resources", "a job must ask for some CPU or GPU, or nothing bounds how many run at once"
            )

    def as_units(self) -> dict[str, int]:
        wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus}
        return {name: round(v * UNITS) for name, v in wanted.items() if v}
