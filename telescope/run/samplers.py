"""An Optuna study over one level's box, kept in the sweep directory.

The study lives in an Optuna journal file (append-only like the ledger), so a resumed sweep
continues it. The ledger stays the source of truth (telescope.run.levels decides what to run);
this module only builds the samplers as telescope.spec.samplers describes them and wraps ask/tell.

A resumed study must not replay its first run's random stream: a sampler rebuilt with the same
seed proposes the same start-up points again. The sampler's seed therefore also covers how many
trials the study already holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from telescope.spec.samplers import SamplerInfo

JOURNAL_FILE = "optuna.journal"

# Optuna sampler classes by telescope sampler name; the start-up size comes from SamplerInfo.
_FACTORIES = {
    "tpe": lambda seed, startup: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
    "gp": lambda seed, startup: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup),
    "random": lambda seed, startup: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed, startup: optuna.samplers.CmaEsSampler(seed=seed),
    "qmc": lambda seed, startup: optuna.samplers.QMCSampler(seed=seed, warn_asynchronous_seeding=False),
}


def make_sampler(info: SamplerInfo, budget: int, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for `info`, its start-up sized to the level's budget."""
    return _FACTORIES[info.name](seed, info.startup_trials(budget))


class LevelStudy:
    """Ask/tell over one level's box. Points are dicts axis -> value in real space."""

    def __init__(self, sweep_dir: str | Path, level: int, sampler: SamplerInfo, budget: int,
                 box: Mapping[str, tuple[float, float]], log_axes: Sequence[str], seed: int = 0):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(Path(sweep_dir) / JOURNAL_FILE)))
        self.distributions = {
            name: FloatDistribution(lo, hi, log=name in log_axes) for name, (lo, hi) in box.items()
        }
        self.study = optuna.create_study(
            storage=storage, study_name=f"level-{level}", direction="minimize", load_if_exists=True,
        )
        held = len(self.study.get_trials(deepcopy=False))
        stream = int(np.random.SeedSequence([seed, level, held]).generate_state(1)[0])
        self.study.sampler = make_sampler(sampler, budget, stream)

    def asked(self) -> dict[int, dict[str, float]]:
        """Every point the study has asked for, by Optuna trial number."""
        return {t.number: dict(t.params) for t in self.study.get_trials(deepcopy=False)}

    def unfinished(self) -> dict[int, dict[str, float]]:
        return {
            t.number: dict(t.params)
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        }

    def ask(self) -> tuple[int, dict[str, float]]:
        trial = self.study.ask(self.distributions)
        return trial.number, dict(trial.params)

    def abandon(self, number: int) -> None:
        """Close an ask that never got its point (the controller died inside `ask`) as failed."""
        if self.study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
            self.study.tell(number, state=TrialState.FAIL)

    def tell(self, number: int, point: Mapping[str, float], loss: float) -> None:
        """Record `point`'s mean loss under trial `number`; a non-finite loss (diverged/failed) is a
        failed trial. Nothing happens if the study's trial `number` is another point (a study
        rebuilt after its journal was lost numbers its asks afresh) or was told already."""
        trials = self.study.get_trials(deepcopy=False)
        if number >= len(trials) or trials[number].state != TrialState.RUNNING:
            return
        if any(not math.isclose(trials[number].params.get(k, math.nan), v, rel_tol=1e-11) for k, v in point.items()):
            return
        if math.isfinite(loss):
            self.study.tell(number, loss)
        else:
            self.study.tell(number, state=TrialState.FAIL)
