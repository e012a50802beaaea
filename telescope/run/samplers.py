"""Optuna inside one level: `sampler = "tpe"` (or gp, random, cmaes, qmc) spends the level's budget
of points inside the level's narrowed box instead of on its grid.

The study lives in the sweep directory (an Optuna journal file, append-only like the ledger), so a
resumed sweep continues it. The ledger stays the source of truth: a result it holds that the study
never heard of (the controller died between the two writes) is told on resume, and a point the
study asked for whose trials never finished is run again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from telescope.errors import ConfigError

JOURNAL_FILE = "optuna.journal"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_asynchronous_seeding=False)
    raise ConfigError("sampler", f"unknown Optuna sampler {name!r}; use tpe, gp, random, cmaes or qmc")


class LevelStudy:
    """Ask/tell over one level's box. Points are dicts axis -> value in real space."""

    def __init__(self, sweep_dir: str | Path, level: int, sampler: str,
                 box: Mapping[str, tuple[float, float]], log_axes: Sequence[str], seed: int = 0):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(Path(sweep_dir) / JOURNAL_FILE)))
        self.distributions = {
            name: FloatDistribution(lo, hi, log=name in log_axes) for name, (lo, hi) in box.items()
        }
        self.study = optuna.create_study(
            storage=storage, study_name=f"level-{level}", sampler=make_sampler(sampler, seed + level),
            direction="minimize", load_if_exists=True,
        )

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

    def tell(self, number: int, loss: float) -> None:
        """Record a point's mean loss; a non-finite loss (diverged/failed) is a failed trial."""
        trial = self.study.get_trials(deepcopy=False)[number]
        if trial.state != TrialState.RUNNING:
            return  # already told (a resumed sweep re-tells nothing twice)
        if math.isfinite(loss):
            self.study.tell(number, loss)
        else:
            self.study.tell(number, state=TrialState.FAIL)
