"""Export the transferred hyperparameters: what a user copies into the config of the real run.

The base values are the optimum of the widest finished level (the calibration width once the sweep
is complete), with their provenance. At the width W the user will train, muP turns them into
concrete per-parameter-group values (telescope.core.scaling). `extrapolate` fits the drift
x*(n) = x_inf - alpha/n over the levels' optima (telescope.core.fits) and predicts x*(W) with its
uncertainty, for when W is far beyond the calibration width.

An optimum still on an edge of its level's grid (`bracketed: false`) is the end of where the
sweep looked, not an optimum: the document then carries a `warnings` list that says so and
names the setting that would bracket it, and the CLI prints each warning on stderr.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import tomli_w
import yaml

from telescope.state import sweep_state
from telescope.errors import ConfigError
from telescope.core.drift import drift_fits
from telescope.core.scaling import scaling_for
from telescope.spec.sweep import SweepSpec
from telescope.core.rule import LevelResult, bracket_fix

FORMATS = ("json", "yaml", "toml")


def export(out: str | Path, width: int | None = None, extrapolate: bool = False) -> dict[str, Any]:
    spec, _, state = sweep_state(out)
    width = spec.target_width if width is None else width
    if not state.levels:
        raise ConfigError(
            str(out), "no level has finished yet, so there is nothing to export; see `telescope status`"
        )
    final = state.levels[-1]
    base = {name: float(v) for name, v in final.optimum.point.items()}
    doc: dict[str, Any] = {
        "sweep": spec.name,
        "complete": state.complete,
        "levels_finished": len(state.levels),
        "levels_planned": spec.n_levels,
        "base_width": spec.base_width,
        "width": width,
        "hyperparameters": base,
        "provenance": _provenance(final),
        "fixed": _fixed_settings(spec),
        "at_width": _groups(spec, width, base),
        "levels": [_provenance(level) | {"optimum": dict(level.optimum.point)} for level in state.levels],
    }
    warnings = _bracket_warnings(spec, final)
    if warnings:
        doc["warnings"] = warnings
    if not state.complete:
        doc["warning"] = (
            f"unfinished sweep: {len(state.levels)} of {spec.n_levels} levels done; "
            f"these values come from width {final.width}, not the calibration width {spec.calibration_width}"
        )
    if extrapolate:
        doc["extrapolated"] = _extrapolate(spec, state.levels, width)
    return doc


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "json":
        return json.dumps(doc, indent=2, allow_nan=True) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False)
    return tomli_w.dumps(_drop_none(doc))


def _bracket_warnings(spec: SweepSpec, level: LevelResult) -> list[str]:
    """One line per axis whose exported optimum sits on a grid edge that could have grown."""
    max_rings = spec.max_widenings if level.level == 0 else spec.max_shifts
    return [
        f"{name} = {level.optimum.point[name]:.4g} is not bracketed: it is on the {edge} edge of the level-"
        f"{level.level} grid (width {level.width}), so the optimum may lie beyond it; "
        + bracket_fix(level.level, name, edge, max_rings, spec.centre)
        for name, edge in level.unbracketed.items()
    ]


def _provenance(level: LevelResult) -> dict[str, Any]:
    opt = level.optimum
    return {
        "level": level.level,
        "width": level.width,
        "loss": opt.loss,  # mean final validation loss over seeds at the best grid point
        "method": opt.method,  # quadratic / parabola / grid / sample: how the point was refined
        "n_seeds": opt.n_seeds,
        "grid": level.grid.shape,
        "bracketed": level.bracketed,  # interior on every axis that could grow
    }


def _fixed_settings(spec: SweepSpec) -> dict[str, Any]:
    cfg = spec.fixed
    keep = ("optimizer", "parameterization", "hidden_lr_rule", "depth", "head_dim", "mlp_ratio",
            "seq_len", "batch_size", "steps", "warmup_frac", "final_lr_frac")
    swept = set(spec.axis_names)
    extra = {name: getattr(cfg, name) for name in ("lr", "init_std", "weight_decay") if name not in swept}
    return {name: getattr(cfg, name) for name in keep} | extra


def _groups(spec: SweepSpec, width: int, base: dict[str, float]) -> dict[str, Any]:
    """The concrete values muP gives at `width`: lr, weight decay and init std per group."""
    s = scaling_for(spec.trial_config(width, base, spec.seeds[0]))
    return {
        "width_mult": s.width_mult,
        "lr": {"muon_hidden" if spec.fixed.optimizer == "muon" else "adamw_hidden": s.lr["hidden"],
               "adamw_embedding": s.lr["embedding"], "adamw_norm": s.lr["norm"],
               "adamw_readout": s.lr["readout"]},
        "weight_decay": dict(s.weight_decay),
        "init_std": {"embedding": s.init_embedding, "attn_qkv": s.init_attn_qkv, "attn_out": s.init_attn_out,
                     "mlp_in": s.init_mlp_in, "mlp_out": s.init_mlp_out, "readout": s.init_readout},
        "output_mult": s.output_mult,
        "attn_scale": s.attn_scale,
    }


def _extrapolate(spec: SweepSpec, levels: list[LevelResult], width: int) -> dict[str, Any]:
    result: dict[str, Any] = {"model": "x*(n) = x_inf - alpha/n, fitted in each axis's scale (log: ln x)"}
    values: dict[str, float] = {}
    for name, fit in drift_fits(spec.axes, levels).items():
        if isinstance(fit, str):
            result[name] = {"error": fit}
            continue
        at = fit.predict(width)
        lo, hi = at.interval(1.0)
        values[name] = at.value
        result[name] = {
            "value": at.value, "band_1sigma": [lo, hi], "stderr_scale_space": at.stderr,
            "x_inf": fit.predict(math.inf).value, "alpha": fit.alpha, "alpha_stderr": fit.alpha_stderr,
            "uncertainty_source": fit.uncertainty_source, "n_levels": fit.n_points,
        }
    if len(values) == len(spec.axes):
        result["at_width"] = _groups(spec, width, values)
    return result


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value
