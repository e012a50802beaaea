"""The compare spec: a TOML file, validated into a frozen `CompareSpec` that names every trial.

Layout (sweeps/compare.toml is a commented example):

    kind = "compare", name, width, base_width, seeds, batch_sizes, tokens, target_loss, evals,
    eval_windows
    [model], [training]   the TrialConfig settings every trial shares (as in a sweep spec)
    [lr.muon], [lr.adamw] each optimizer's lr grid: low, high, points (log-spaced)
    [resources]           per trial: num_cpus, num_gpus, time_limit_s, max_retries

Every run of a study sees the same number of tokens (steps = tokens / (batch_size * seq_len)), so
small batches take many short steps and large ones few long steps, and every batch size is scored
on the same validation windows. Every bad input raises ConfigError naming the dotted key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telescope.core.contract import TrialConfig, trial_id
from telescope.core.numbers import round_sig
from telescope.errors import ConfigError
from telescope.spec.fields import (
    MODEL_FIELDS,
    NAME_PATTERN,
    TRAINING_FIELDS,
    is_number,
    read_resources,
    read_seeds,
    read_settings_section,
    read_toml,
    reject_unknown,
    required,
    spec_path,
    whole_number,
)
from telescope.spec.resources import Resources

KIND = "compare"  # the spec's `kind` and the study directory's stored kind
OPTIMIZERS = ("muon", "adamw")  # R = T_adamw / T_muon: the study needs both
LEVEL = 0  # one width, one level: the ledger's `level` column and the trial ids' "L0"
TOP_LEVEL_KEYS = (
    "kind", "name", "width", "base_width", "seeds", "batch_sizes", "tokens", "target_loss", "evals",
    "eval_windows", "model", "training", "lr", "resources",
)
LR_KEYS = ("low", "high", "points")
# TrialConfig fields the study sets itself, and from where (for the error message).
SET_BY_STUDY = {
    "width": "the top-level width",
    "base_width": "the top-level base_width",
    "seed": "the top-level seeds",
    "optimizer": "the [lr.muon] and [lr.adamw] tables",
    "lr": "the [lr.muon] and [lr.adamw] tables",
    "batch_size": "the top-level batch_sizes",
    "steps": "tokens / (batch_size * seq_len)",
    "eval_interval": "the top-level evals",
    "eval_batches": "the top-level eval_windows",
    "num_threads": "the dispatcher, from resources.num_cpus",
}
STUDY_TRAINING_FIELDS = tuple(f for f in TRAINING_FIELDS if f not in SET_BY_STUDY)
DEFAULT_EVALS = 16
MIN_EVAL_WINDOWS = 64


@dataclass(frozen=True)
class StudyTrial:
    """One run of the study: an (optimizer, batch size, lr, seed) and the TrialConfig it trains."""

    trial_id: str
    optimizer: str
    batch_size: int
    lr: float
    seed: int
    config: TrialConfig


@dataclass(frozen=True)
class CompareSpec:
    """A validated compare study. `fixed` holds every setting shared by all its trials."""

    name: str
    fixed: TrialConfig  # at the study's width and base_width; per-trial fields are placeholders
    batch_sizes: tuple[int, ...]
    tokens: int  # trained on by every run
    lrs: tuple[tuple[str, tuple[float, ...]], ...]  # (optimizer, its lr grid), in OPTIMIZERS order
    seeds: tuple[int, ...] = (0,)
    target_loss: float | None = None  # None: "auto", the loss every best run reaches
    evals: int = DEFAULT_EVALS  # validation points per run, evenly spaced in steps
    eval_windows: int = MIN_EVAL_WINDOWS  # validation windows, the same for every batch size
    resources: Resources = Resources()
    time_limit_s: float | None = None
    max_retries: int = 3

    @property
    def width(self) -> int:
        return self.fixed.width

    @property
    def seq_len(self) -> int:
        return self.fixed.seq_len

    def lr_grid(self, optimizer: str) -> tuple[float, ...]:
        return dict(self.lrs)[optimizer]

    def steps(self, batch_size: int) -> int:
        return self.tokens // (batch_size * self.seq_len)

    def trial_config(self, optimizer: str, batch_size: int, lr: float, seed: int) -> TrialConfig:
        steps = self.steps(batch_size)
        return self.fixed.replace(
            optimizer=optimizer, batch_size=batch_size, lr=lr, seed=seed, steps=steps,
            eval_interval=max(1, steps // self.evals),
            # the same windows for every batch size: val_batches spreads batch * n windows evenly
            eval_batches=self.eval_windows // batch_size,
        )

    def trials(self) -> list[StudyTrial]:
        out = []
        for optimizer, grid in self.lrs:
            for batch_size in self.batch_sizes:
                for lr in grid:
                    for seed in self.seeds:
                        cfg = self.trial_config(optimizer, batch_size, lr, seed)
                        out.append(StudyTrial(trial_id(LEVEL, cfg), optimizer, batch_size, lr, seed, cfg))
        return out

    def fingerprint(self) -> str:
        """A hash of what every trial shares: the model, data, training settings, tokens and
        evaluation. Two specs with the same fingerprint give the same trial the same id, so a
        study may widen its lr grids or add batch sizes or seeds and reuse every recorded trial;
        target, name and resources only change how the trials are run or read."""
        shared = {"fixed": self.fixed.fingerprint(), "tokens": self.tokens, "evals": self.evals,
                  "eval_windows": self.eval_windows}
        return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def load_compare_spec(path: str | Path) -> CompareSpec:
    return parse_compare_spec(read_toml(path, "compare spec", "sweeps/compare.toml"))


def parse_compare_spec(data: Mapping[str, Any]) -> CompareSpec:
    """Validate a compare spec given as a dict (the TOML layout); errors name the dotted key."""
    if not isinstance(data, Mapping):
        raise ConfigError("spec", f"must be a table of settings; got {type(data).__name__}")
    kind = data.get("kind")
    if kind != KIND:
        hint = "a sweep spec is run with `telescope run`" if kind is None else f"got {kind!r}"
        raise ConfigError("kind", f'a compare spec starts with kind = "{KIND}" ({hint})')
    reject_unknown(data, TOP_LEVEL_KEYS, "")
    name = required(data, "name", 'name = "compare"')
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError("name", f"must be letters, digits, '.', '_' or '-' (it names the run); got {name!r}")
    width = whole_number(required(data, "width", "width = 64"), "width", 1)
    base_width = whole_number(data.get("base_width", width), "base_width", 1)
    seeds = read_seeds(data.get("seeds", 1))
    batch_sizes = _batch_sizes(required(data, "batch_sizes", "batch_sizes = [4, 8, 16, 32]"))
    tokens = whole_number(required(data, "tokens", "tokens = 262144"), "tokens", 1)
    target = _target(data.get("target_loss", "auto"))
    evals = whole_number(data.get("evals", DEFAULT_EVALS), "evals", 2)
    lcm = math.lcm(*batch_sizes)
    windows = whole_number(data.get("eval_windows", lcm * math.ceil(MIN_EVAL_WINDOWS / lcm)), "eval_windows", 1)
    if windows % lcm:
        raise ConfigError(
            "eval_windows",
            f"must be a multiple of every batch size (of {lcm}), so each batch size is scored on the "
            f"same validation windows; got {windows}",
        )
    for section in ("model", "training"):
        table = data.get(section, {})
        for key in table if isinstance(table, Mapping) else ():
            if key in SET_BY_STUDY:
                raise ConfigError(f"{section}.{key}", f"set by {SET_BY_STUDY[key]}; remove it here")
    settings = {
        **read_settings_section(data, "model", MODEL_FIELDS, ()),
        **read_settings_section(data, "training", STUDY_TRAINING_FIELDS, ()),
    }
    lrs = _lr_grids(data.get("lr"))
    resources, time_limit, retries = read_resources(data.get("resources", {}), 1)
    try:
        fixed = TrialConfig(**settings, width=width, base_width=base_width, seed=seeds[0])
    except ConfigError as err:
        where = err.field if err.field in ("width", "base_width") else spec_path(err.field, ())
        raise ConfigError(where, err.message) from None
    if fixed.data.endswith(".bin") and fixed.vocab_size is None:
        raise ConfigError("training.vocab_size", "required when training.data is a .bin token file")
    for b in batch_sizes:
        if tokens % (b * fixed.seq_len):
            raise ConfigError(
                "tokens",
                f"must be a multiple of batch_size * seq_len for every batch size, so every run sees the "
                f"same tokens; {tokens} is not a multiple of {b} * {fixed.seq_len}: use a multiple of "
                f"{lcm * fixed.seq_len}",
            )
    spec = CompareSpec(
        name=name, fixed=fixed, batch_sizes=batch_sizes, tokens=tokens, lrs=lrs, seeds=seeds,
        target_loss=target, evals=evals, eval_windows=windows, resources=resources[0],
        time_limit_s=time_limit, max_retries=retries,
    )
    spec.trials()  # every trial's config must be valid now, not after half the study has run
    return spec


def log_spaced(low: float, high: float, points: int) -> tuple[float, ...]:
    """`points` lrs evenly spaced in log from `low` to `high` inclusive (one point: their geometric
    midpoint), rounded by `round_sig` as trial ids are.

    The lrs enter the trial ids, so this is the sweep's base-grid arithmetic (centre + offset *
    spacing in log space, telescope.core.rule.base_grid) step for step: numpy.geomspace differs
    in the last bits and with one point gives `low`, and either would rename recorded trials.
    """
    lo, hi = math.log(low), math.log(high)
    spacing = (hi - lo) / (points - 1) if points > 1 else hi - lo
    centre, start = (lo + hi) / 2, -(points - 1) / 2
    return tuple(round_sig(math.exp(centre + (start + j) * spacing)) for j in range(points))


def _batch_sizes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("batch_sizes", f"must be a non-empty list of batch sizes, e.g. [4, 8, 16, 32]; got {value!r}")
    for b in value:
        whole_number(b, "batch_sizes", 1)
    if len(set(value)) != len(value):
        raise ConfigError("batch_sizes", f"must not repeat a batch size; got {value!r}")
    return tuple(sorted(value))


def _target(value: Any) -> float | None:
    if value == "auto":
        return None
    if is_number(value) and value > 0:
        return float(value)
    raise ConfigError("target_loss", f'must be "auto" or a positive validation loss (nats/token); got {value!r}')


def _lr_grids(value: Any) -> tuple[tuple[str, tuple[float, ...]], ...]:
    example = "[lr.muon] and [lr.adamw], each with low, high, points (log-spaced)"
    if not isinstance(value, Mapping):
        raise ConfigError("lr", f"must be the tables {example}")
    reject_unknown(value, OPTIMIZERS, "lr.")
    grids = []
    for optimizer in OPTIMIZERS:
        path = f"lr.{optimizer}"
        table = value.get(optimizer)
        if not isinstance(table, Mapping):
            raise ConfigError(path, f"missing or not a table; the study compares both optimizers: give {example}")
        grids.append((optimizer, _lr_grid(table, path)))
    return tuple(grids)


def _lr_grid(table: Mapping[str, Any], path: str) -> tuple[float, ...]:
    """One [lr.OPTIMIZER] table's grid: low < high, both > 0, points >= 1."""
    reject_unknown(table, LR_KEYS, f"{path}.")
    for key, ex in (("low", "1e-3"), ("high", "3e-2"), ("points", "3")):
        required(table, key, f"{key} = {ex}", f"{path}.")
    # ints made floats, so that low = 1 and low = 1.0 are one grid and the messages agree
    low, high = (float(table[k]) if isinstance(table[k], int) and not isinstance(table[k], bool) else table[k]
                 for k in ("low", "high"))
    for end, x in (("low", low), ("high", high)):
        if not is_number(x):
            raise ConfigError(f"{path}.{end}", f"must be a finite number; got {x!r}")
    if not low < high:
        raise ConfigError(f"{path}.low", f"must be below high ({high!r}); got {low!r}: swap them or widen the range")
    if low <= 0:
        raise ConfigError(f"{path}.low", f"must be > 0 (the grid is log-spaced); got {low!r}")
    points = whole_number(table["points"], f"{path}.points", 1)
    return log_spaced(low, high, points)
