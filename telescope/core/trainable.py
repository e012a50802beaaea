"""Your own model in the sweep: what a trainable is, what it receives and what it gives back.

A trainable turns one trial's inputs into its result. The spec's [trainable] table chooses one of
three kinds (telescope.spec.fields.read_trainable):

    builtin   telescope's muP GPT (telescope.train.trial.run_trial): the default
    python    a function "package.module:function", called on a Ray worker with a TrialContext
    command   a command line with {placeholders}, run in its own process group; it writes its
              result to result.json in its trial directory, and may append its curve to curve.jsonl

A trial of a level with [resources] workers = N > 1 has N ranks (telescope.run.distributed): the
built-in GPT and a Python function run on N Ray Train workers with torch.distributed initialised
(the context's rank, local_rank and world_size), rank 0's result being the trial's; a command runs
once, holding N x the per-worker resources on one node, and launches its N ranks itself
({workers}, e.g. torchrun --nproc-per-node {workers}).

All of that is described here, without torch or Ray: the `Trainable` and its identity (which trial
ids cover), the `TrialContext` a trial receives, the placeholders a command line may use, the
`Curve` with its divergence rule, and `parse_result`, which turns what a trainable returned or
wrote into a TrialResult. Running the kinds is telescope.run.trainables.

A result is a mapping (a number stands for {"final_loss": number}):

    final_loss        the objective, lower is better (required unless status is "diverged")
    status            "completed" (default) or "diverged"
    tokens, flops, optimizer_flops, steps_done, n_params, final_train_loss, device, error
                      optional; steps_done and final_train_loss default to the reported curve
    any other key     a scalar declared in [trainable] metrics: one float ledger column each

A curve point is `report(step, train_loss=..., val_loss=...)` from Python, or one JSON object per
line of curve.jsonl ({"step": 10, "train_loss": 2.3}) from a command.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import shutil
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from telescope.core.contract import Status, TrialConfig, TrialResult
from telescope.core.numbers import canonical, json_safe
from telescope.core.scaling import DRAWN, GROUPS, GroupValues, group_values
from telescope.errors import ConfigError

Kind = Literal["builtin", "python", "command"]
KINDS = ("builtin", "python", "command")

# The files telescope reads and writes in a trial directory; a re-run starts without them.
CONTEXT_FILE = "context.json"  # the TrialContext as JSON, for a command to read
RESULT_FILE = "result.json"  # a command's result
CURVE_FILE = "curve.jsonl"  # a command's curve, one {"step", "train_loss", "val_loss"} per line
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
TRIAL_FILES = (CONTEXT_FILE, RESULT_FILE, CURVE_FILE, STDOUT_FILE, STDERR_FILE)

CURVE_METRICS = ("train_loss", "val_loss")  # what the ledger's curves table holds
RESULT_FIELDS = ("final_loss", "status", "final_train_loss", "tokens", "flops", "optimizer_flops", "steps_done",
                 "n_params", "device", "error")
RESULT_STATUSES = ("completed", "diverged")  # "failed" is what telescope records when a trial breaks
# Columns every ledger row already has: a declared metric may not take one of these names.
RESERVED_COLUMNS = frozenset(
    {f.name for f in dataclasses.fields(TrialResult)}
    | {"trial_id", "level", "width", "seed", "point_id", "sampler_trial", "node", "gpu_ids", "attempt",
       "workers", "nodes", "finished_at", "step"}
)

# Placeholders of a command line beyond the TrialConfig fields and [trainable.settings]: the trial's
# files, the interpreter telescope runs under, the ranks it is to launch ({workers}: the level's
# resources.workers) and muP's per-group values at the trial's width.
FILE_PLACEHOLDERS = {"trial_dir": "", "context": CONTEXT_FILE, "result": RESULT_FILE, "curve": CURVE_FILE}
MUP_PLACEHOLDERS = (
    *(f"mup_lr_{g}" for g in GROUPS), *(f"mup_weight_decay_{g}" for g in GROUPS),
    *(f"mup_init_std_{g}" for g in DRAWN), "mup_output_mult",
)
BASE_PLACEHOLDERS = ("python", "trial_id", *FILE_PLACEHOLDERS, "workers", "width_mult", *MUP_PLACEHOLDERS,
                     *(f for f in TrialConfig.field_names() if f != "trainable"))


class TrialDiverged(Exception):
    """Raised by `TrialContext.report` when the loss diverges: let it propagate, and the trial is
    recorded as diverged at that step (it is recorded so even if the trainable catches it)."""


class ResultError(ValueError):
    """What a trainable returned or wrote is not a result; the trial is recorded as failed."""


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Trainable:
    """Which code trains a trial, as the spec's [trainable] table says. Frozen and hashable, so a
    SweepSpec holding it stays so; `settings` is [trainable.settings] as (key, value) pairs."""

    kind: Kind = "builtin"
    function: str = ""  # python: "package.module:function"
    command: tuple[str, ...] = ()  # command: argv with {placeholders}
    version: str = ""  # the user bumps it when the code changes, so no old row is reused
    working_dir: str = "."  # where the code is, relative to where telescope runs; commands run there
    metrics: tuple[str, ...] = ()  # extra scalars the trainable returns: one ledger column each
    settings: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def create(cls, kind: Kind, *, settings: Mapping[str, Any] | None = None, command: Sequence[str] = (),
               metrics: Sequence[str] = (), **rest: Any) -> "Trainable":
        frozen = tuple((k, _freeze(v)) for k, v in (settings or {}).items())
        return cls(kind, command=tuple(command), metrics=tuple(metrics), settings=frozen, **rest)

    @property
    def builtin(self) -> bool:
        return self.kind == "builtin"

    def settings_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.settings}

    def identity(self) -> str:
        """What trial ids cover of the trainable: its kind, function or command, version and
        settings. "" for the built-in GPT, whose trial ids are the TrialConfig's alone."""
        if self.builtin:
            return ""
        what = {"function": self.function} if self.kind == "python" else {"command": list(self.command)}
        blob = {"kind": self.kind, **what, "version": self.version, "settings": self.settings_dict()}
        return json.dumps(canonical(blob), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        """The [trainable] table as a spec writes it (empty for the built-in GPT)."""
        if self.builtin:
            return {}
        what = {"function": self.function} if self.kind == "python" else {"command": list(self.command)}
        return {"kind": self.kind, **what, "version": self.version, "working_dir": self.working_dir,
                "metrics": list(self.metrics), "settings": self.settings_dict()}


class Curve:
    """A trial's reported losses by step, and the built-in GPT's divergence rule: a train loss
    that is not finite or exceeds diverge_factor x the first one reported, or a validation loss
    that is not finite."""

    def __init__(self, diverge_factor: float):
        self.diverge_factor = diverge_factor
        self.train: dict[int, float] = {}
        self.val: dict[int, float] = {}
        self.diverged: str | None = None  # why, from the first divergence seen
        self._first: float | None = None

    def add(self, step: int, train_loss: float | None = None, val_loss: float | None = None) -> str | None:
        """Record one point; returns why the trial diverged if this point shows it."""
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(f"step: must be a whole number; got {step!r}")
        if step < 0:
            raise ValueError(f"step: must be >= 0; got {step}")
        reason = None
        for name, value in (("train_loss", train_loss), ("val_loss", val_loss)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TypeError(f"{name}: must be a number; got {value!r}")
        if train_loss is not None:
            loss = self.train[step] = float(train_loss)
            if self._first is None:
                self._first = loss
            limit = self.diverge_factor * self._first
            if not math.isfinite(loss):
                reason = f"loss {loss} at step {step}"
            elif self._first > 0 and loss > limit:
                reason = f"loss {loss:.4g} > {self.diverge_factor:g} x initial {self._first:.4g} at step {step}"
        if val_loss is not None:
            loss = self.val[step] = float(val_loss)
            if not math.isfinite(loss):
                reason = f"validation loss {loss} at step {step}"
        if reason is not None and self.diverged is None:
            self.diverged = reason
        return reason

    def add_line(self, line: str) -> str | None:
        """One line of curve.jsonl; ResultError if it is not a curve point."""
        try:
            point = json.loads(line)
        except json.JSONDecodeError as err:
            raise ResultError(f"not JSON ({err})") from None
        if not isinstance(point, dict) or "step" not in point:
            raise ResultError(f'must be an object with a step, e.g. {{"step": 10, "train_loss": 2.3}}; got {line.strip()[:80]}')
        unknown = sorted(set(point) - {"step", *CURVE_METRICS})
        if unknown:
            raise ResultError(f"{unknown[0]!r} is not a curve metric; the curve holds {', '.join(CURVE_METRICS)}")
        try:
            return self.add(point["step"], point.get("train_loss"), point.get("val_loss"))
        except (TypeError, ValueError) as err:
            raise ResultError(str(err)) from None

    @property
    def steps_done(self) -> int:
        return max([*self.train, *self.val], default=0)

    @property
    def final_train_loss(self) -> float:
        return self.train[max(self.train)] if self.train else math.nan

    def columns(self) -> dict[str, list]:
        """TrialResult's curve fields."""
        train, val = sorted(self.train), sorted(self.val)
        return {"train_steps": train, "train_loss": [self.train[s] for s in train],
                "val_steps": val, "val_loss": [self.val[s] for s in val]}


@dataclass(frozen=True)
class TrialContext:
    """Everything one trial of a user's trainable receives.

    `params` are the swept values (base values, named as the spec's axes); `config` is the full
    TrialConfig with them set (steps, batch_size, seq_len, data, device, ... as [model] and
    [training] fix them); `settings` is [trainable.settings]; `mup` holds muP's concrete per-group
    values at this width (telescope.core.scaling.group_values); `trial_dir` is this trial's own
    directory. Call `report` with the loss as training goes.

    A multi-worker trial ([resources] workers > 1) has `world_size` ranks. A Python function runs
    on each of them with torch.distributed initialised, as rank `rank` (`local_rank` on its node);
    only rank 0's reports make the curve and only its return value is the result, so report the
    same (all-reduced) loss on every rank and every rank stops at the same step when it diverges.
    A command runs once, as rank 0, and launches the `world_size` ranks itself (its {workers}).
    """

    trial_id: str
    width: int
    base_width: int
    seed: int
    params: Mapping[str, float]
    config: TrialConfig
    settings: Mapping[str, Any]
    mup: GroupValues
    trial_dir: Path
    curve: Curve = field(repr=False, compare=False)
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def create(cls, trial_id: str, config: TrialConfig, point: Mapping[str, float], settings: Mapping[str, Any],
               trial_dir: Path, *, rank: int = 0, local_rank: int = 0, world_size: int = 1) -> "TrialContext":
        mup = group_values(config.width_mult, config.lr, config.weight_decay, config.init_std,
                           optimizer=config.optimizer, hidden_lr_rule=config.hidden_lr_rule,
                           parameterization=config.parameterization)
        return cls(trial_id, config.width, config.base_width, config.seed, dict(point), config, dict(settings),
                   mup, Path(trial_dir), Curve(config.diverge_factor), rank, local_rank, world_size)

    @property
    def width_mult(self) -> float:
        return self.width / self.base_width

    @property
    def num_threads(self) -> int | None:
        """The CPUs the trial was given (torch.set_num_threads(ctx.num_threads) uses them)."""
        return self.config.num_threads

    def report(self, step: int, **metrics: float) -> None:
        """Record the loss at `step` (train_loss and/or val_loss) for the ledger's curve. Raises
        TrialDiverged once the loss diverges (see Curve), so the trial stops there."""
        unknown = sorted(set(metrics) - set(CURVE_METRICS))
        if unknown:
            raise TypeError(f"report: {unknown[0]!r} is not a curve metric; report {' and/or '.join(CURVE_METRICS)}, "
                            "and return other scalars with the result (declared in [trainable] metrics)")
        reason = self.curve.add(step, **metrics)
        if reason is not None:
            raise TrialDiverged(reason)

    def to_json(self, files: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The context as context.json holds it (non-finite numbers as null)."""
        return json_safe({
            "trial_id": self.trial_id, "width": self.width, "base_width": self.base_width, "seed": self.seed,
            "params": dict(self.params), "settings": dict(self.settings), "config": self.config.to_dict(),
            "mup": self.mup.to_dict(), "trial_dir": str(self.trial_dir), "rank": self.rank,
            "local_rank": self.local_rank, "world_size": self.world_size, **({"files": dict(files)} if files else {}),
        })


# ---- command lines --------------------------------------------------------------------------


def placeholders(arg: str) -> list[str]:
    """The {field} names in one argument; ValueError on unbalanced braces ({{ }} are literal)."""
    return [name for _, name, _, _ in string.Formatter().parse(arg) if name is not None]


def placeholder_values(ctx: TrialContext, python: str) -> dict[str, Any]:
    """Every placeholder's value for this trial (see BASE_PLACEHOLDERS and [trainable.settings]).
    Numbers stay numbers, so "{lr:.3e}" formats as Python would; None is "", booleans are
    "true"/"false" and lists JSON."""
    values: dict[str, Any] = {**ctx.config.to_dict(), **ctx.settings}
    values.pop("trainable", None)
    values |= {"python": python, "trial_id": ctx.trial_id, "workers": ctx.world_size, "width_mult": ctx.width_mult,
               "mup_output_mult": ctx.mup.output_mult}
    values |= {name: str(ctx.trial_dir / file) if file else str(ctx.trial_dir) for name, file in FILE_PLACEHOLDERS.items()}
    for group in GROUPS:
        values[f"mup_lr_{group}"] = ctx.mup.lr[group]
        values[f"mup_weight_decay_{group}"] = ctx.mup.weight_decay[group]
    for group in DRAWN:
        values[f"mup_init_std_{group}"] = ctx.mup.init_std[group]
    return {k: _placeholder_value(v) for k, v in values.items()}


def render_command(command: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """The command line with its placeholders filled in."""
    return [arg.format_map(values) for arg in command]


def _placeholder_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(_thaw(value))
    return value


def find_program(program: str, code_dir: str) -> str | None:
    """Where a command's program is (a path, taken from code_dir, or a name on PATH), or None."""
    if os.sep in program:
        path = os.path.join(code_dir, program)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(program)


# ---- Python functions -----------------------------------------------------------------------


def import_function(target: str, code_dir: str | None) -> Callable[[TrialContext], Any]:
    """The function named "package.module:function", imported with `code_dir` (the trainable's
    working directory) first on sys.path; ConfigError on trainable.function if it cannot be."""
    module_name, _, attr = target.partition(":")
    if code_dir is not None and code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    where = f"working_dir {code_dir}" if code_dir else "the worker's working directory"
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 — the module's own error is the message, whatever it is
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            "trainable.function",
            f"cannot import {module_name!r} from {where} ({type(err).__name__}: {first}); check the module path, "
            "or set trainable.working_dir to the directory that holds its package",
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError("trainable.function", f"{module_name!r} has no {attr!r}; name a function defined there")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError("trainable.function", f"{target!r} is a {type(obj).__name__}, not a function")
    return obj


# ---- results --------------------------------------------------------------------------------


def _number(raw: Mapping[str, Any], name: str, default: float, *, whole: bool = False) -> Any:
    value = raw.get(name, default)
    if value is None:
        return math.nan if not whole else default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultError(f"{name}: must be a number; got {value!r}")
    if whole:
        if not (float(value).is_integer() and value >= 0):
            raise ResultError(f"{name}: must be a whole number >= 0; got {value!r}")
        return int(value)
    return float(value)


def parse_result(raw: Any, *, metrics: Sequence[str], curve: Curve, wall_time_s: float) -> TrialResult:
    """What a trainable returned (or wrote as result.json) as its TrialResult; ResultError if it
    is not a result. A divergence seen in the curve makes the trial diverged whatever it says."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = {"final_loss": raw}
    if not isinstance(raw, Mapping):
        raise ResultError(f'must be an object with final_loss, e.g. {{"final_loss": 2.31}}; got {type(raw).__name__}')
    extra: dict[str, float] = {m: math.nan for m in metrics}
    for key, value in raw.items():
        if key in RESULT_FIELDS:
            continue
        if key not in metrics:
            raise ResultError(f"{key!r} is neither a result field ({', '.join(RESULT_FIELDS)}) nor declared in "
                              "trainable.metrics; declare it there to keep it as a ledger column")
        if value is not None and (not isinstance(value, (int, float))):
            raise ResultError(f"{key}: a metric must be a number; got {value!r}")
        extra[key] = math.nan if value is None else float(value)
    status: Status = raw.get("status", "completed")
    if status not in RESULT_STATUSES:
        raise ResultError(f"status: must be one of {', '.join(RESULT_STATUSES)}; got {status!r}")
    error = raw.get("error")
    if error is not None and not isinstance(error, str):
        raise ResultError(f"error: must be a string; got {error!r}")
    if status == "completed" and "final_loss" not in raw:
        raise ResultError('has no final_loss; give the objective (lower is better), e.g. {"final_loss": 2.31}')
    final_loss = _number(raw, "final_loss", math.nan)
    if curve.diverged is not None:
        status, error = "diverged", curve.diverged
    elif status == "completed" and not math.isfinite(final_loss):
        status, error = "diverged", f"final_loss {final_loss}"
    elif status == "diverged" and error is None:
        error = "the trainable reported it diverged"
    device = raw.get("device", "")
    if not isinstance(device, str):
        raise ResultError(f"device: must be a string; got {device!r}")
    return TrialResult(
        status=status,
        final_loss=final_loss if status == "completed" else math.nan,
        final_train_loss=_number(raw, "final_train_loss", curve.final_train_loss),
        tokens=_number(raw, "tokens", 0, whole=True),
        flops=_number(raw, "flops", 0.0),
        optimizer_flops=_number(raw, "optimizer_flops", 0.0),
        wall_time_s=wall_time_s,
        device=device,
        steps_done=_number(raw, "steps_done", curve.steps_done, whole=True),
        n_params=_number(raw, "n_params", 0, whole=True),
        error=error,
        extra=extra,
        **curve.columns(),
    )


def failed_result(error: str | None, *, metrics: Sequence[str] = (), wall_time_s: float = 0.0,
                  curve: Curve | None = None) -> TrialResult:
    """A trial that broke (raised, exited non-zero, wrote no result, timed out, lost its worker):
    NaN losses, the declared metrics as NaN (so a sweep's columns do not depend on which trial is
    recorded first), and whatever curve it reported."""
    curve = curve or Curve(math.inf)
    return TrialResult(
        status="failed", final_loss=math.nan, final_train_loss=math.nan, tokens=0, flops=0.0,
        optimizer_flops=0.0, wall_time_s=wall_time_s, device="", steps_done=curve.steps_done, n_params=0,
        error=error, extra={m: math.nan for m in metrics}, **curve.columns(),
    )
