"""What each per-level sampler does, as facts a spec and a plan can state without importing Optuna.

A level runs either its grid's points (`grid`) or asks an Optuna sampler for as many distinct
points inside the level's box as the grid would have had. The running layer
(telescope.run.levels) builds the Optuna sampler from the same entry, so what `plan` says a
level does is what it does.

Start-up: Optuna's TPE and GP samplers draw their first `n_startup_trials` points at random
(10 by default). A 3x3 level has 9 points, so with the default it would be random search under
another name; here the start-up is sized to a third of the level's budget (at least 2, at most
Optuna's 10), so two thirds of every level are spent by the model the sampler is named after.
CMA-ES needs whole generations to adapt; a level too small for two of them is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from telescope.errors import ConfigError

OPTUNA_STARTUP_DEFAULT = 10


@dataclass(frozen=True)
class SamplerInfo:
    """One sampler name: whether it runs the grid's fixed points, and how it spends a budget."""

    name: str
    fixed_points: bool  # True: the level's grid points, each with a deterministic trial id
    summary: str  # what it does, in a few words
    has_startup: bool = False  # TPE / GP: random start-up trials before the model takes over

    def startup_trials(self, budget: int) -> int:
        """Random start-up points out of a level's `budget` (0 for samplers without a start-up)."""
        if not self.has_startup:
            return 0
        return max(2, min(OPTUNA_STARTUP_DEFAULT, budget // 3))

    def describe(self, budget: int, n_axes: int) -> str:
        """One line for `plan`: what this level's sampler will actually do with its budget."""
        if self.fixed_points:
            return f"{budget} grid points"
        if self.has_startup:
            startup = self.startup_trials(budget)
            return f"{startup} random start-up points, then {budget - startup} {self.summary}"
        if self.name == "cmaes":
            pop = cmaes_population(n_axes)
            return f"{budget} points: {budget // pop} generations of {pop} ({self.summary})"
        return f"{budget} {self.summary}"


def cmaes_population(n_axes: int) -> int:
    """CMA-ES's default population, 4 + floor(3 ln k) (Hansen), which Optuna's sampler uses."""
    return 4 + math.floor(3 * math.log(n_axes))


SAMPLERS: dict[str, SamplerInfo] = {
    info.name: info
    for info in (
        SamplerInfo("grid", True, "grid points"),
        SamplerInfo("tpe", False, "TPE-guided points", has_startup=True),
        SamplerInfo("gp", False, "Gaussian-process-guided points", has_startup=True),
        SamplerInfo("random", False, "uniform random points in the level's box"),
        SamplerInfo("cmaes", False, "CMA-ES"),
        SamplerInfo("qmc", False, "quasi-random (Sobol) points in the level's box"),
    )
}


def sampler_info(name: str) -> SamplerInfo:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError("sampler", f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}") from None


def check_budget(name: str, level: int, budget: int, n_axes: int) -> None:
    """Refuse a sampler that cannot act within a level's budget, in one line naming the fix."""
    if name == "cmaes" and budget < 2 * cmaes_population(n_axes):
        pop = cmaes_population(n_axes)
        raise ConfigError(
            "sampler",
            f"cmaes at level {level} has {budget} points, fewer than the two generations of {pop} CMA-ES "
            "needs before it adapts at all; use tpe, qmc or grid at that level, or more points per axis",
        )
