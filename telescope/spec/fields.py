"""Validating readers for the fields of a TOML spec, shared by the sweep spec (telescope.spec.sweep)
and the compare study spec (telescope.studies.compare.spec).

Both spec kinds hold the TrialConfig settings they keep fixed in the same two tables, [model] (the
shape: MODEL_FIELDS) and [training] (the rest: TRAINING_FIELDS), read by `read_settings_section`.
Each reader returns the checked value or raises ConfigError naming the offending key as a dotted
path ("resources.num_gpus").
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from telescope.core.contract import TrialConfig
from telescope.core.trainable import BASE_PLACEHOLDERS, KINDS, RESERVED_COLUMNS, Trainable, placeholders
from telescope.errors import ConfigError
from telescope.spec.resources import Resources

RESOURCE_KEYS = ("num_cpus", "num_gpus", "workers", "time_limit_s", "max_retries")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MODEL_FIELDS = ("depth", "head_dim", "mlp_ratio", "parameterization")
# Set by the sweep itself, not by [model]/[training]: where each comes from, for the error message.
SET_BY_SWEEP = {
    "width": "the level (base_width doubling to calibration_width)",
    "base_width": "the top-level base_width",
    "seed": "the top-level seeds",
    "num_threads": "the dispatcher, from resources.num_cpus",
    "trainable": "the [trainable] table",
}
TRAINING_FIELDS = tuple(
    f for f in TrialConfig.field_names() if f not in MODEL_FIELDS and f not in SET_BY_SWEEP
)


def read_toml(path: str | Path, what: str, examples: str) -> dict[str, Any]:
    """A spec file's TOML as a dict, or a one-line ConfigError naming the file and the fix."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(str(p), f"no such file; check the path (example: {examples})")
    if not p.is_file():
        raise ConfigError(str(p), f"is not a file; give the path of a .toml {what}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(p), f"not valid TOML: {err}; fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), f"not UTF-8 text; a {what} is a TOML file") from None


def reject_unknown(table: Mapping[str, Any], valid: Sequence[str], prefix: str) -> None:
    """Raise ConfigError on the first key of `table` not in `valid`, suggesting the closest."""
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"{prefix}{key}", f"unknown key; {hint}")


def required(table: Mapping[str, Any], key: str, example: str, prefix: str = "") -> Any:
    """`table[key]`, or a ConfigError saying it is missing, with `example` as the fix."""
    if key not in table:
        raise ConfigError(f"{prefix}{key}", f"missing; add it, e.g. {example}")
    return table[key]


def whole_number(value: Any, field: str, minimum: int) -> int:
    """`value` if it is a whole number >= `minimum`, else a ConfigError on `field`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(field, f"must be a whole number >= {minimum}; got {value!r}")
    return value


def is_number(value: Any) -> bool:
    """Whether `value` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_seeds(value: Any) -> tuple[int, ...]:
    """The top-level `seeds`: a count (seeds 0..n-1) or a list of distinct seeds, as a tuple."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(
                "seeds", f"must be >= 1 (seeds per point) or a list of seeds like [0, 1, 2]; got {value}"
            )
        return tuple(range(value))
    if isinstance(value, list) and value:
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
            raise ConfigError("seeds", f"a list of seeds must hold whole numbers >= 0; got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError("seeds", f"a list of seeds must not repeat one; got {value!r}")
        return tuple(value)
    raise ConfigError(
        "seeds", f"must be a count >= 1 (e.g. 2) or a non-empty list of seeds (e.g. [0, 1]); got {value!r}"
    )


def read_table(data: Mapping[str, Any], key: str, example: str) -> Mapping[str, Any]:
    """`data[key]` as a table ({} if absent), or a ConfigError showing `example`."""
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a table, e.g. {example}; got {value!r}")
    return value


def read_settings_section(
    data: Mapping[str, Any], section: str, allowed: Sequence[str], axis_names: Sequence[str]
) -> dict[str, Any]:
    """Settings of [model] or [training], with ints given for float fields made floats (so
    `weight_decay = 0` and `= 0.0` are one trial)."""
    table = read_table(data, section, f"[{section}]")
    out = {}
    for key, value in table.items():
        path = f"{section}.{key}"
        if key in axis_names:
            raise ConfigError(
                path, f"{key} is swept in [axes.{key}]; remove it here, or drop the axis to hold it fixed"
            )
        if key in SET_BY_SWEEP:
            raise ConfigError(path, f"set by {SET_BY_SWEEP[key]}; remove it here")
        other = "training" if section == "model" else "model"
        if key in (TRAINING_FIELDS if section == "model" else MODEL_FIELDS):
            raise ConfigError(path, f"{key} is a {other} setting; move it to [{other}]")
        if key not in allowed:
            reject_unknown({key: value}, allowed, f"{section}.")
        declared = TrialConfig.__dataclass_fields__[key].type
        is_float = declared == "float" or (isinstance(declared, type) and declared is float)
        as_float = is_float and isinstance(value, int) and not isinstance(value, bool)
        out[key] = float(value) if as_float else value
    return out


def spec_path(field: str, axis_names: Sequence[str]) -> str:
    """Where a TrialConfig field is set in the spec."""
    if field in axis_names:
        return f"axes.{field}"
    if field in MODEL_FIELDS:
        return f"model.{field}"
    if field in TRAINING_FIELDS:
        return f"training.{field}"
    return {"seed": "seeds"}.get(field, field)


def read_resources(value: Any, n_levels: int, *, workers: bool = False) -> tuple[tuple[Resources, ...], float | None, int]:
    """[resources] as (one Resources per level, time_limit_s or None, max_retries). `workers`:
    whether the spec's trials may run on several workers each (a sweep's may)."""
    keys = RESOURCE_KEYS if workers else tuple(k for k in RESOURCE_KEYS if k != "workers")
    if not isinstance(value, Mapping):
        raise ConfigError("resources", f"must be a table: [resources] with {', '.join(keys)}")
    if "workers" in value and not workers:
        raise ConfigError("resources.workers", "multi-worker trials run in sweeps only; remove it here")
    reject_unknown(value, keys, "resources.")
    cpus = _per_level(value.get("num_cpus", 1), n_levels, "resources.num_cpus", _check_cpus)
    gpus = _per_level(value.get("num_gpus", 0), n_levels, "resources.num_gpus", _check_gpus)
    counts = _per_level(value.get("workers", 1), n_levels, "resources.workers", _check_workers)
    time_limit = value.get("time_limit_s")
    if time_limit is not None and not (is_number(time_limit) and time_limit > 0):
        raise ConfigError(
            "resources.time_limit_s",
            f"must be a positive number of seconds (or left out); got {time_limit!r}",
        )
    retries = whole_number(value.get("max_retries", 3), "resources.max_retries", 0)
    return tuple(Resources(c, g, n) for c, g, n in zip(cpus, gpus, counts)), time_limit, retries


def _per_level(value: Any, n_levels: int, field: str, check: Any) -> list[float]:
    values = value if isinstance(value, list) else [value] * n_levels
    if len(values) != n_levels:
        raise ConfigError(field, f"a list needs one entry per level ({n_levels} levels); got {len(values)}")
    for v in values:
        check(v, field)
    return values


def _check_cpus(v: Any, field: str) -> None:
    if not (is_number(v) and v > 0):
        raise ConfigError(field, f"must be a number of CPUs per trial > 0 (e.g. 1); got {v!r}")


def _check_workers(v: Any, field: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(field, f"must be a whole number of worker processes per trial >= 1 (e.g. 2; num_cpus and "
                                 f"num_gpus are then per worker); got {v!r}")


def _check_gpus(v: Any, field: str) -> None:
    if not (is_number(v) and v >= 0):
        raise ConfigError(field, f"must be a number of GPUs per trial >= 0; got {v!r}")
    Resources(num_gpus=v)  # the packing rule (fractions only below one GPU) lives there


# ---- [trainable] ------------------------------------------------------------------------------

TRAINABLE_KEYS = {
    "builtin": ("kind",),
    "python": ("kind", "function", "version", "working_dir", "metrics", "settings"),
    "command": ("kind", "command", "version", "working_dir", "metrics", "settings"),
}
_ALL_TRAINABLE_KEYS = ("kind", "function", "command", "version", "working_dir", "metrics", "settings")
_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRAINABLE_EXAMPLE = ('[trainable] with function = "mypkg.train:train", or command = '
                      '["{python}", "train.py", "--lr", "{lr}", "--out", "{trial_dir}"]')


def read_trainable(data: Mapping[str, Any], axis_names: Sequence[str]) -> Trainable:
    """[trainable]: which code trains each trial (absent: the built-in GPT). The kind may be left
    out when `function` (python) or `command` (command) says it."""
    table = data.get("trainable")
    if table is None:
        return Trainable()
    if not isinstance(table, Mapping):
        raise ConfigError("trainable", f"must be a table, e.g. {_TRAINABLE_EXAMPLE}")
    reject_unknown(table, _ALL_TRAINABLE_KEYS, "trainable.")
    kind = table.get("kind", "python" if "function" in table else "command" if "command" in table else "builtin")
    if kind not in KINDS:
        raise ConfigError("trainable.kind", f"must be one of {', '.join(KINDS)}; got {kind!r}")
    for key in table:
        if key not in TRAINABLE_KEYS[kind]:
            why = ("the built-in GPT takes its settings from [model] and [training]" if kind == "builtin"
                   else f"a {kind} trainable has {', '.join(TRAINABLE_KEYS[kind][1:])}")
            raise ConfigError(f"trainable.{key}", f"not a setting of kind = {kind!r} ({why}); remove it")
    if kind == "builtin":
        return Trainable()
    version = table.get("version", "")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str):
        raise ConfigError("trainable.version", f'must be a string you bump when the code changes, e.g. "2"; got {version!r}')
    working_dir = table.get("working_dir", ".")
    if not isinstance(working_dir, str) or not working_dir:
        raise ConfigError("trainable.working_dir", f"must be a directory path; got {working_dir!r}")
    settings = _trainable_settings(table.get("settings", {}))
    metrics = _trainable_metrics(table.get("metrics", []), axis_names)
    common = dict(version=version, working_dir=working_dir, metrics=metrics, settings=settings)
    if kind == "python":
        function = required(table, "function", 'function = "mypkg.train:train"', "trainable.")
        if not isinstance(function, str) or not _FUNCTION.fullmatch(function):
            raise ConfigError("trainable.function",
                              f'must name a function as "package.module:function"; got {function!r}')
        return Trainable.create("python", function=function, **common)
    command = required(table, "command", 'command = ["{python}", "train.py", "--lr", "{lr}"]', "trainable.")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise ConfigError("trainable.command",
                          f'must be a list of non-empty strings, e.g. ["{{python}}", "train.py", "--lr", "{{lr}}"]; got {command!r}')
    _check_placeholders(command, (*BASE_PLACEHOLDERS, *settings))
    return Trainable.create("command", command=command, **common)


def _trainable_settings(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError("trainable.settings", f"must be a table of your own settings, e.g. [trainable.settings] "
                                                f"with n_layers = 2; got {value!r}")
    for key, v in value.items():
        path = f"trainable.settings.{key}"
        if not _IDENTIFIER.fullmatch(key):
            raise ConfigError(path, "must be a name of letters, digits and '_' (it is a placeholder too)")
        if key in BASE_PLACEHOLDERS:
            raise ConfigError(path, f"{key} is already a field of every trial (set it in [model] or [training] "
                                    "if it is one of those); rename it")
        if not _plain_value(v):
            raise ConfigError(path, f"must be a string, number, boolean or a list of them; got {v!r}")
    return dict(value)


def _plain_value(v: Any) -> bool:
    if isinstance(v, list):
        return all(_plain_value(x) for x in v)
    return isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v))


def _trainable_metrics(value: Any, axis_names: Sequence[str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ConfigError("trainable.metrics", f'must be a list of metric names, e.g. ["grad_norm"]; got {value!r}')
    for m in value:
        if not _IDENTIFIER.fullmatch(m):
            raise ConfigError("trainable.metrics", f"{m!r} must be a name of letters, digits and '_'")
        if m in RESERVED_COLUMNS or m in axis_names:
            raise ConfigError("trainable.metrics", f"{m!r} is already a ledger column; rename the metric")
    if len(set(value)) != len(value):
        raise ConfigError("trainable.metrics", f"names a metric twice: {value!r}")
    return value


def _check_placeholders(command: Sequence[str], known: Sequence[str]) -> None:
    for i, arg in enumerate(command, 1):
        try:
            names = placeholders(arg)
        except ValueError as err:
            raise ConfigError("trainable.command",
                              f"argument {i} {arg!r}: {err}; write {{{{ and }}}} for a literal brace") from None
        for name in names:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {{{close[0]}}}?" if close else (
                "use a field such as {width}, {lr}, {seed}, {trial_dir}, or a key of [trainable.settings]")
            raise ConfigError("trainable.command",
                              f"placeholder {{{name}}} in argument {i} ({arg!r}) names no field; {hint}")

