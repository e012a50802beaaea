"""The sweep spec: a TOML file, validated into a typed, frozen `SweepSpec`.

Layout (sweeps/demo.toml is a commented example):

    name, base_width, calibration_width, target_width, seeds, min_points, max_widenings,
    max_shifts, centre, sampler
    [model]      the shape held fixed across widths: depth, head_dim, mlp_ratio, parameterization
    [training]   every other TrialConfig setting held fixed: steps, seq_len, batch_size, data, ...
    [axes.NAME]  one table per swept hyperparameter: low, high, scale ("log"/"linear"), points
    [resources]  per trial: num_cpus, num_gpus, workers (each a number, or a list with one per
                 level; with workers > 1, num_cpus and num_gpus are per worker), time_limit_s,
                 max_retries
    [trainable]  which code trains each trial: the built-in GPT (absent), a Python function or a
                 command line (telescope.core.trainable, read by telescope.spec.fields.read_trainable)

Every bad input raises ConfigError naming the offending key as a dotted path ("axes.lr.low").
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w

from telescope.core.contract import EXECUTION_FIELDS, LEGACY_NS_DTYPE, TrialConfig
from telescope.core.numbers import canonical
from telescope.core.trainable import Trainable
from telescope.errors import ConfigError
from telescope.spec.resources import Resources
from telescope.spec.fields import (
    MODEL_FIELDS, NAME_PATTERN, TRAINING_FIELDS, is_number, read_resources, read_seeds, read_settings_section,
    read_toml, read_trainable, reject_unknown, required, spec_path, whole_number,
)
from telescope.core.rule import CENTRES, Axis, Centre, count_schedule, level_widths
from telescope.spec.samplers import SamplerInfo, check_budget, sampler_info

# Sweepable hyperparameters and their valid ranges (closed). val_frac and diverge_factor are
# floats too, but they define the measurement, not the training, so sweeping them means nothing.
AXIS_BOUNDS: dict[str, tuple[float, float]] = {
    "lr": (0.0, math.inf),
    "init_std": (0.0, math.inf),
    "weight_decay": (0.0, math.inf),
    "warmup_frac": (0.0, 1.0),
    "final_lr_frac": (0.0, 1.0),
}
LOG_ONLY = ("lr", "init_std")  # scales: must stay > 0 however far the grid moves
AXIS_KEYS = ("low", "high", "scale", "points")
TOP_LEVEL_KEYS = (
    "name", "base_width", "calibration_width", "target_width", "seeds", "min_points", "max_widenings",
    "max_shifts", "centre", "sampler", "model", "training", "axes", "resources", "trainable",
)
# The values of the rule's later settings that reproduce the rule before they existed (the paper's:
# no rings after level 0, centred on the previous optimum). A spec at these values keeps the
# fingerprint it had then, so its sweep directories stay its own.
LEGACY_RULE = {"max_shifts": 0, "centre": "previous"}
# The defaults a recorded spec may have been written under, newest first: before ns_dtype existed
# (every Newton-Schulz in bf16), and before that, before the rule above and the spectral default.
EARLIER_DEFAULTS = (
    ({}, {"ns_dtype": LEGACY_NS_DTYPE}),
    (LEGACY_RULE, {"hidden_lr_rule": "adam-mup", "ns_dtype": LEGACY_NS_DTYPE}),
)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep. `fixed` is the TrialConfig every trial starts from (at the base width,
    first seed); the swept fields in it are placeholders that each point overrides."""

    name: str
    base_width: int
    calibration_width: int
    target_width: int  # the width the user will train: results are exported for it
    axes: tuple[Axis, ...]
    fixed: TrialConfig
    seeds: tuple[int, ...] = (0,)
    min_points: int = 1
    max_widenings: int = 2
    max_shifts: int = 2  # rings a later level may add while its optimum sits on an edge
    centre: Centre = "drift"  # "previous": the paper's rule
    samplers: tuple[str, ...] = ("grid",)  # one per level
    resources: tuple[Resources, ...] = (Resources(),)  # one per level
    time_limit_s: float | None = None
    max_retries: int = 3
    trainable: Trainable = Trainable()  # the built-in GPT unless [trainable] names other code
    # What device = "auto" resolved to for each level's trials, as their sweep directory records it
    # (telescope.run.devices); None until then. Not part of the spec: no TOML key, no fingerprint.
    devices: tuple[str, ...] | None = None

    @property
    def widths(self) -> list[int]:
        return level_widths(self.base_width, self.calibration_width)

    @property
    def n_levels(self) -> int:
        return len(self.widths)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    def sampler(self, level: int) -> SamplerInfo:
        """What level `level`'s sampler is: grid points or an Optuna sampler's asks."""
        return sampler_info(self.samplers[level])

    def on_devices(self, devices: Sequence[str]) -> "SweepSpec":
        """This spec with device = "auto" resolved per level to `devices` ("cpu" or "cuda")."""
        if len(devices) != self.n_levels:
            raise ValueError(f"devices: one per level ({self.n_levels}); got {list(devices)}")
        return replace(self, devices=tuple(devices))

    def trial_config(self, width: int, point: Mapping[str, float], seed: int) -> TrialConfig:
        """The trial at `width` and `seed` with the swept values of `point`. At a level's width,
        device = "auto" becomes the level's resolved device, so the trial's id is the one an
        explicit setting would give."""
        if set(point) != set(self.axis_names):
            raise ConfigError(
                "axes", f"a point must set exactly {', '.join(self.axis_names)}; got {', '.join(point)}"
            )
        device = self.fixed.device
        if device == "auto" and self.devices is not None and width in self.widths:
            device = self.devices[self.widths.index(width)]
        try:
            return self.fixed.replace(width=width, seed=seed, device=device,
                                      **{k: float(v) for k, v in point.items()})
        except ConfigError as err:
            raise ConfigError(spec_path(err.field, self.axis_names), err.message) from None

    def to_dict(self) -> dict[str, Any]:
        """The spec in its TOML layout, every setting spelled out (None values omitted)."""
        one = len(set(self.samplers)) == 1
        data: dict[str, Any] = {
            "name": self.name,
            "base_width": self.base_width,
            "calibration_width": self.calibration_width,
            "target_width": self.target_width,
            "seeds": len(self.seeds) if self.seeds == tuple(range(len(self.seeds))) else list(self.seeds),
            "min_points": self.min_points,
            "max_widenings": self.max_widenings,
            "max_shifts": self.max_shifts,
            "centre": self.centre,
            "sampler": self.samplers[0] if one else list(self.samplers),
            "model": {f: getattr(self.fixed, f) for f in MODEL_FIELDS},
            "training": {
                f: getattr(self.fixed, f)
                for f in TRAINING_FIELDS
                if f not in self.axis_names and getattr(self.fixed, f) is not None
            },
            "axes": {
                a.name: {"low": a.low, "high": a.high, "scale": a.scale, "points": a.points}
                for a in self.axes
            },
            "resources": {
                "num_cpus": _per_level_out([r.num_cpus for r in self.resources]),
                "num_gpus": _per_level_out([r.num_gpus for r in self.resources]),
            },
        }
        if any(r.workers != 1 for r in self.resources):  # absent when every trial has one worker, as before
            data["resources"]["workers"] = _per_level_out([r.workers for r in self.resources])
        if self.time_limit_s is not None:
            data["resources"]["time_limit_s"] = self.time_limit_s
        data["resources"]["max_retries"] = self.max_retries
        if not self.trainable.builtin:  # absent for the built-in GPT: its specs keep their fingerprints
            data["trainable"] = self.trainable.to_dict()
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def fingerprint(self) -> str:
        """A stable hash of what decides the sweep's trials and results. Leaves out the name,
        target_width (export only) and [resources] (how trials run, not what they compute), and
        max_shifts / centre where they are at `LEGACY_RULE`, so a spec written before they existed
        keeps its fingerprint when set to the rule it ran under."""
        data = {
            k: v for k, v in self.to_dict().items()
            if k not in ("name", "target_width", "resources") and LEGACY_RULE.get(k, object()) != v
        }
        if "trainable" in data:  # where the code lives is not what it computes
            data["trainable"] = {k: v for k, v in data["trainable"].items() if k != "working_dir"}
        # how trials run (micro-batches, compiling, ...), not what they compute: as trial ids do
        data["training"] = {k: v for k, v in data["training"].items() if k not in EXECUTION_FIELDS}
        if data["training"].get("ns_dtype") == LEGACY_NS_DTYPE:  # as before the setting existed
            data["training"] = {k: v for k, v in data["training"].items() if k != "ns_dtype"}
        blob = json.dumps(canonical(data), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _per_level_out(values: list[float]) -> float | list[float]:
    return values[0] if len(set(values)) == 1 else values


# ---- loading ----------------------------------------------------------------------------------


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML sweep spec."""
    return parse_spec(read_toml(path, "sweep spec", "sweeps/demo.toml, sweeps/paper.toml"))


def load_recorded_spec(path: str | Path, fingerprint: str) -> SweepSpec:
    """A sweep directory's spec copy, read as the rule that recorded its ledger.

    A spec written before `ns_dtype`, or before `max_shifts`, `centre` and the spectral hidden-lr
    default existed, says nothing about them; read with today's defaults it would replay other
    trials against its ledger. If the copy's fingerprint is not the directory's `fingerprint` but
    the copy with one set of `EARLIER_DEFAULTS` filled in matches it, that is the spec returned;
    otherwise the copy as it reads (and the caller's fingerprint check says what is wrong)."""
    data = read_toml(path, "sweep spec", "sweeps/demo.toml, sweeps/paper.toml")
    spec = parse_spec(data)
    if spec.fingerprint() == fingerprint:
        return spec
    training = data.get("training") if isinstance(data.get("training"), Mapping) else {}
    for rule, training_defaults in EARLIER_DEFAULTS:
        earlier = parse_spec({**rule, **data, "training": {**training_defaults, **training}})
        if earlier.fingerprint() == fingerprint:
            return earlier
    return spec


def parse_spec(data: Mapping[str, Any]) -> SweepSpec:
    """Validate a spec given as a dict (the TOML layout) into a SweepSpec."""
    if not isinstance(data, Mapping):
        raise ConfigError("spec", f"must be a table of settings; got {type(data).__name__}")
    reject_unknown(data, TOP_LEVEL_KEYS, "")
    name = required(data, "name", 'name = "my-sweep"')
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            "name", f"must be letters, digits, '.', '_' or '-' (it names the run); got {name!r}"
        )
    base = whole_number(required(data, "base_width", "base_width = 256"), "base_width", 1)
    calibration = whole_number(
        required(data, "calibration_width", "calibration_width = 2048"), "calibration_width", 1
    )
    target = whole_number(required(data, "target_width", "target_width = 4096"), "target_width", 1)
    widths = level_widths(base, calibration)
    if target < calibration:
        raise ConfigError(
            "target_width",
            f"must be >= calibration_width ({calibration}): it is the width you will train, the sweep's "
            f"largest width is below it; got {target}",
        )
    seeds = read_seeds(data.get("seeds", 1))
    axes = _axes(data)
    axis_names = tuple(a.name for a in axes)
    model = read_settings_section(data, "model", MODEL_FIELDS, axis_names)
    training = read_settings_section(data, "training", TRAINING_FIELDS, axis_names)
    trainable = read_trainable(data, axis_names)

    settings = {**model, **training, "seed": seeds[0], "trainable": trainable.identity()}
    fixed = _config(settings | {"width": base, "base_width": base}, axis_names, width_field="base_width")
    _config(settings | {"width": target, "base_width": base}, axis_names, width_field="target_width")
    for a in axes:  # each axis's extremes must be valid settings (e.g. warmup_frac <= 1)
        for end in ("low", "high"):
            try:
                fixed.replace(**{a.name: getattr(a, end)})
            except ConfigError as err:
                raise ConfigError(f"axes.{a.name}.{end}", err.message) from None
    if fixed.data.endswith(".bin") and fixed.vocab_size is None:
        raise ConfigError(
            "training.vocab_size",
            "required when training.data is a .bin token file: set it to the tokenizer's vocabulary "
            "size (e.g. 50304)",
        )

    min_points = whole_number(data.get("min_points", 1), "min_points", 1)
    if min_points % 2 == 0:
        raise ConfigError(
            "min_points", f"must be odd, so a grid keeps a point on the previous optimum; got {min_points}"
        )
    for a in axes:
        if a.points < min_points:
            raise ConfigError(
                f"axes.{a.name}.points",
                f"must be >= min_points ({min_points}); got {a.points}: raise it or lower min_points",
            )
    max_widenings = whole_number(data.get("max_widenings", 2), "max_widenings", 0)
    max_shifts = whole_number(data.get("max_shifts", 2), "max_shifts", 0)
    centre = data.get("centre", "drift")
    if centre not in CENTRES:
        raise ConfigError(
            "centre",
            f'must be "drift" (follow the fitted drift of the optimum) or "previous" (the paper\'s rule: '
            f"centre on the previous optimum); got {centre!r}",
        )
    samplers = _samplers(data.get("sampler", "grid"), len(widths))
    schedule = count_schedule([a.points for a in axes], len(widths), min_points)
    for level, (sampler, counts) in enumerate(zip(samplers, schedule)):
        check_budget(sampler, level, math.prod(counts), len(axes))
    resources, time_limit, max_retries = read_resources(data.get("resources", {}), len(widths), workers=True)
    return SweepSpec(
        name=name,
        base_width=base,
        calibration_width=calibration,
        target_width=target,
        axes=axes,
        fixed=fixed,
        seeds=seeds,
        min_points=min_points,
        max_widenings=max_widenings,
        max_shifts=max_shifts,
        centre=centre,
        samplers=samplers,
        resources=resources,
        time_limit_s=time_limit,
        max_retries=max_retries,
        trainable=trainable,
    )


def _config(settings: dict[str, Any], axis_names: Sequence[str], width_field: str) -> TrialConfig:
    try:
        return TrialConfig(**settings)
    except ConfigError as err:
        if err.field in ("width", "base_width"):
            raise ConfigError(width_field, f"{err.message}: change it, or model.head_dim") from None
        raise ConfigError(spec_path(err.field, axis_names), err.message) from None


def _axes(data: Mapping[str, Any]) -> tuple[Axis, ...]:
    example = "[axes.lr] with low = 1e-3, high = 3e-2, points = 5"
    raw = required(data, "axes", example)
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("axes", f"must be one or more [axes.NAME] tables, e.g. {example}")
    axes = []
    for name, table in raw.items():
        path = f"axes.{name}"
        if name not in AXIS_BOUNDS:
            raise ConfigError(path, f"not a sweepable hyperparameter; choose from {', '.join(AXIS_BOUNDS)}")
        if not isinstance(table, Mapping):
            raise ConfigError(path, f"must be a table with low, high, points (and scale), e.g. {example}")
        reject_unknown(table, AXIS_KEYS, f"{path}.")
        for key, example_value in (("low", "1e-3"), ("high", "3e-2"), ("points", "5")):
            required(table, key, f"{key} = {example_value}", f"{path}.")
        scale = table.get("scale", "log")
        if name in LOG_ONLY and scale == "linear":
            raise ConfigError(
                f"{path}.scale", f'{name} must stay > 0 as the grid moves: sweep it with scale = "log"'
            )
        low, high = (float(table[k]) if is_number(table[k]) else table[k] for k in ("low", "high"))
        axes.append(Axis(name, low, high, scale, table["points"], AXIS_BOUNDS[name]))
    return tuple(axes)


def _samplers(value: Any, n_levels: int) -> tuple[str, ...]:
    names = [value] * n_levels if isinstance(value, str) else value
    if not isinstance(names, list) or len(names) != n_levels:
        raise ConfigError(
            "sampler",
            f"must be one sampler name or a list with one per level ({n_levels} levels); got {value!r}",
        )
    for s in names:
        sampler_info(s)
    return tuple(names)
