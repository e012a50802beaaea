"""Export the transferred hyperparameters: what a user copies into the config of the real run.

The base values are the optimum of the widest finished level (the calibration width once the sweep
is complete), with their provenance, except on an axis whose optimum the levels measure drifting
with width (telescope.core.noise.extrapolations: a fit with a degree of freedom left and alpha
significantly non-zero): the calibration value is then not the optimum at another width W, and
the drift's prediction for W is exported instead (`drift_followed` says which axes, from what
and by which law, with a warning; `follow_drift=False` keeps the calibration values). muP alone
is right where nothing drifts; where the parameterization is off by a power of width (Muon's lr
under the paper's lr/m) the optimum keeps moving, and no value tuned at one width carries to
another. At the width W the user will train, muP turns the base values into concrete
per-parameter-group values (telescope.core.scaling). `extrapolate` fits the drift of the
levels' optima (x*(n) = x_inf - alpha/n, or x*(n) = c * n^alpha where three or more levels agree
with that better; telescope.core.fits) and predicts x*(W) with its uncertainty, for when W is far
beyond the calibration width.

An optimum still on an edge of its level's grid (`bracketed: false`) is the end of where the
sweep looked, not an optimum: the document then carries a `warnings` list that says so and
names the setting that would bracket it, and the CLI prints each warning on stderr. So does an
optimum the levels measure drifting with width (the drift fit's alpha significantly non-zero):
the calibration value is then not the optimum at a wider W, and the warning gives the drift's
prediction for W, which `extrapolate` documents in full.

The document configures the user's run, not only its learning rates: `optimizers` holds every
other setting the trials used (Muon's momentum, Nesterov, Newton-Schulz steps and coefficients, eps
and adjust_lr_fn; AdamW's betas and eps; coupled weight decay), `schedule` the lr schedule, and
`tuned_at` the horizon and batch the values were tuned at. `at_width` names its lr and weight decay
groups alike ("hidden", "embedding", "norm", "readout") and says which optimizer takes each.
`load_export` reads a rendered document back, whatever its format.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import yaml

from telescope.state import sweep_state
from telescope.errors import ConfigError
from telescope.core.noise import Extrapolation, LevelNoise, extrapolations, level_noise, level_noises
from telescope.core.numbers import format_uncertain, json_safe
from telescope.core.contract import TrialConfig
from telescope.core.optimizers import optimizer_of_group, optimizer_settings
from telescope.core.scaling import scaling_for
from telescope.spec.sweep import SweepSpec
from telescope.core.rule import LevelResult, bracket_fix

FORMATS = ("json", "yaml", "toml")


def export(out: str | Path, width: int | None = None, extrapolate: bool = False,
           follow_drift: bool = True) -> dict[str, Any]:
    spec, _, state = sweep_state(out)
    width = spec.target_width if width is None else width
    if not state.levels:
        raise ConfigError(
            str(out), "no level has finished yet, so there is nothing to export; see `telescope status`"
        )
    final = state.levels[-1]
    noises = level_noises(state.levels)
    drift = extrapolations(spec.axes, state.levels, noises, width) if width != final.width else {}
    measured = {name: ex for name, ex in drift.items() if ex.source == "drift" and ex.fit is not None}
    followed = measured if follow_drift else {}
    calibration = {name: float(v) for name, v in final.optimum.point.items()}
    base = calibration | {name: float(ex.estimate.value) for name, ex in followed.items()}
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
        "optimizers": optimizer_settings(
            spec.fixed.optimizer, spec.trial_config(final.width, base, spec.seeds[0]).resolved_ns_dtype),
        "schedule": _schedule(spec.trial_config(width, base, spec.seeds[0])),
        "tuned_at": _tuned_at(spec.fixed),
        "levels": [_provenance(level) | {"optimum": dict(level.optimum.point)} for level in state.levels],
    }
    if followed:
        doc["drift_followed"] = {name: _drift_entry(ex, calibration[name], final.width) for name, ex in followed.items()}
    warnings = _bracket_warnings(spec, final) + _drift_warnings(spec, final, measured, width, follow_drift)
    if warnings:
        doc["warnings"] = warnings
    if not state.complete:
        doc["warning"] = (
            f"unfinished sweep: {len(state.levels)} of {spec.n_levels} levels done; "
            f"these values come from width {final.width}, not the calibration width {spec.calibration_width}"
        )
    if extrapolate:
        doc["extrapolated"] = _extrapolate(spec, state.levels, noises, width)
    return doc


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}; got {fmt!r}")
    doc = _plain(doc)
    if fmt == "json":
        return json.dumps(doc, indent=2, allow_nan=True) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False)
    return tomli_w.dumps(_drop_none(doc))


def load_export(path: str | Path, fmt: str | None = None) -> dict[str, Any]:
    """A rendered export read back: the document `export` returned, for JSON and YAML exactly;
    TOML has no null, so keys whose value was None are absent. `fmt` defaults to the file's
    suffix (.json, .yaml/.yml, .toml)."""
    path = Path(path)
    fmt = fmt or {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise ConfigError(str(path), f"has no export format's suffix (.json, .yaml, .yml, .toml); name the format "
                                     f"({', '.join(FORMATS)})")
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text) if fmt == "json" else yaml.safe_load(text) if fmt == "yaml" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"is unreadable ({getattr(err, 'strerror', None) or err})") from None
    except (json.JSONDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(str(path), f"is not valid {fmt} ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not {"hyperparameters", "at_width"} <= set(doc):
        raise ConfigError(str(path), "is not a telescope export (no hyperparameters or at_width); "
                                     "write one with `telescope export DIR -o FILE`")
    return doc


def _bracket_warnings(spec: SweepSpec, level: LevelResult) -> list[str]:
    """One line per axis whose exported optimum sits on a grid edge that could have grown."""
    max_rings = spec.max_widenings if level.level == 0 else spec.max_shifts
    return [
        f"{name} = {level.optimum.point[name]:.4g} is not bracketed: it is on the {edge} edge of the level-"
        f"{level.level} grid (width {level.width}), so the optimum may lie beyond it; "
        + bracket_fix(level.level, name, edge, max_rings, spec.centre)
        for name, edge in level.unbracketed.items()
    ]


def _drift_warnings(spec: SweepSpec, level: LevelResult, measured: dict[str, Extrapolation], width: int,
                    followed: bool) -> list[str]:
    """One line per axis whose optimum the levels measure drifting: the exported value is then an
    extrapolation (or, not followed, a value that is not the optimum at `width`)."""
    lines = []
    for name, ex in measured.items():
        fit = ex.fit
        assert fit is not None  # `measured` holds drift predictions only
        drifts = (f"drifts with width ({fit.law}, alpha = {format_uncertain(fit.alpha, fit.alpha_stderr)}, "
                  f"p = {ex.alpha_p:.2g} over {fit.n_points} levels)")
        at = level.optimum.point[name]
        if followed:
            line = (f"{name} = {ex.estimate.value:.4g} follows the drift the levels measure: the optimum {drifts} "
                    f"from {at:.4g} at width {level.width} to {ex.estimate.text()} at width {width}, an "
                    f"extrapolation; `--at-calibration` exports {at:.4g} unchanged")
        else:
            line = (f"{name} = {at:.4g} is the optimum at width {level.width}, but it {drifts}: at width {width} "
                    f"the drift predicts {ex.estimate.text()}; without `--at-calibration` the export follows it")
        if name == "lr" and spec.fixed.optimizer == "muon" and spec.fixed.hidden_lr_rule == "adam-mup":
            line += ('; hidden_lr_rule = "adam-mup" (lr/m) under-scales Muon\'s hidden updates by sqrt(m), and '
                     '"spectral" (lr/sqrt(m)) is the rule whose optimum stops drifting')
        lines.append(line)
    return lines


def _drift_entry(ex: Extrapolation, calibration: float, calibration_width: int) -> dict[str, Any]:
    """What a followed axis's value is made of: the calibration optimum and the drift fit's prediction."""
    fit = ex.fit
    assert fit is not None
    return json_safe({
        "calibration": calibration, "calibration_width": calibration_width, "value": ex.estimate.value,
        "band_1sigma": list(ex.estimate.band), "law": fit.law, "alpha": fit.alpha, "alpha_stderr": fit.alpha_stderr,
        "alpha_p_value": ex.alpha_p, "n_levels": fit.n_points,
    })


def _provenance(level: LevelResult) -> dict[str, Any]:
    opt = level.optimum
    noise = level_noise(level)
    return {
        "level": level.level,
        "width": level.width,
        "loss": opt.loss,  # mean final validation loss over seeds at the best grid point
        "loss_std": json_safe(noise.loss.std),  # the seed spread there (None with one seed)
        "loss_display": noise.loss.text(),  # the mean to the digits the spread allows
        "method": opt.method,  # quadratic / parabola / grid / sample: how the point was refined
        "n_seeds": opt.n_seeds,
        "grid": level.grid.shape,
        "bracketed": level.bracketed,  # interior on every axis that could grow
        "noise": noise.noise.to_dict(),  # the level's seed noise (telescope.core.noise)
        "same_best": json_safe(noise.same_best),  # share of noise redraws whose best grid point is this one
        # per axis: full-precision value, its uncertainty and rounded display form, whether the
        # axis's effect beats the noise, and a note when it does not
        "axes": {name: a.to_dict() for name, a in noise.axes.items()},
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
        "lr": dict(s.lr),  # peak lr per group: the schedule multiplies it
        "weight_decay": dict(s.weight_decay),  # coupled: see the document's `optimizers.note`
        "init_std": {"embedding": s.init_embedding, "attn_qkv": s.init_attn_qkv, "attn_out": s.init_attn_out,
                     "mlp_in": s.init_mlp_in, "mlp_out": s.init_mlp_out, "readout": s.init_readout},
        "output_mult": s.output_mult,
        "attn_scale": s.attn_scale,
        "optimizer_of_group": optimizer_of_group(spec.fixed.optimizer),
    }


def _schedule(cfg: TrialConfig) -> dict[str, Any]:
    """telescope.train.optim.lr_factor's schedule, in numbers."""
    return {"shape": "linear warmup then cosine decay", "warmup_frac": cfg.warmup_frac,
            "warmup_steps": cfg.warmup_steps, "final_lr_frac": cfg.final_lr_frac, "steps": cfg.steps,
            "formula": "lr(s) = peak lr * f(s) at 0-based step s: f = (s + 1) / (warmup_steps + 1) while "
                       "s < warmup_steps, then final_lr_frac + (1 - final_lr_frac) * (1 + cos(pi * min(1, "
                       "(s - warmup_steps) / max(1, steps - 1 - warmup_steps)))) / 2"}


def _tuned_at(cfg: TrialConfig) -> dict[str, Any]:
    """The horizon and batch every trial trained at (the same at every width)."""
    per_step = cfg.batch_size * cfg.seq_len
    return {
        "steps": cfg.steps, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "tokens_per_step": per_step,
        "tokens": cfg.steps * per_step,
        "note": (f"tuned over {cfg.steps} steps at batch {cfg.batch_size} x {cfg.seq_len} tokens; lr optima move "
                 "with the training horizon and the batch size, so these values hold for this horizon and "
                 "batch, and a run much longer or with another batch may want other ones"),
    }


def _extrapolate(spec: SweepSpec, levels: list[LevelResult], noises: list[LevelNoise], width: int) -> dict[str, Any]:
    """x*(width) per axis where the drift fit backs a prediction, else the calibration optimum with
    the reason (telescope.core.noise.extrapolations); bands inside each axis's valid range."""
    result: dict[str, Any] = {"model": "per axis, x*(n) = x_inf - alpha/n or x*(n) = c * n^alpha, whichever fits "
                                       "the levels' optima better (3+ levels; else the first), in each axis's "
                                       "scale (log: ln x), each optimum weighted by its measured uncertainty"}
    for name, ex in extrapolations(spec.axes, levels, noises, width).items():
        e, fit = ex.estimate, ex.fit
        entry: dict[str, Any] = {
            "value": e.value, "display": e.display, "band_1sigma": list(e.band),
            "stderr_scale_space": e.stderr, "source": ex.source,
        }
        if ex.note:
            entry["note"] = ex.note
        if fit is None:
            entry["error"] = ex.note
        else:
            limit = fit.limit
            entry |= {
                "law": fit.law, "predicted": fit.predict(width).value,
                "x_inf": None if limit is None else limit.value,  # a power law has no infinite-width limit
                "chi2": fit.chi2, "rival_chi2": fit.rival_chi2, "alpha": fit.alpha, "alpha_stderr": fit.alpha_stderr, "alpha_p_value": ex.alpha_p,
                "alpha_significant": ex.alpha_significant, "exact_interpolation": ex.exact,
                "uncertainty_source": fit.uncertainty_source, "n_levels": fit.n_points, "dof": fit.dof,
            }
        result[name] = json_safe(entry)
    result["at_width"] = _groups(spec, width, {name: result[name]["value"] for name in spec.axis_names})
    return result


def _plain(value: Any) -> Any:
    """`value` with numpy scalars as Python numbers and tuples as lists, through dicts and lists:
    YAML's safe dumper knows only Python's own types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value
