"""The muP coordinate check (Tensor Programs V, and mup's `coord_check`): train the real model for
a few real optimizer steps at several widths with the *same* base hyperparameters and watch each
layer type's activations. Under a correct parameterization every curve is flat in width; under
standard parameterization ("sp") they grow with width.

Three metrics, each a mean |.| per coordinate (mup's `x.abs().mean()`) on one fixed probe batch
after t = 0..steps optimizer steps, averaged over blocks and seeds:
- "scale":  |h_t|, mup's classic picture. Dominated by h_0, i.e. by the init rule, so a hidden
  layer can look flat here while its learning quietly vanishes (or explodes) with width.
- "delta":  |h_t - h_0|, everything the training changed, including what arrives from below.
- "update": |f(x_t; W_t) - f(x_t; W_0)|, the change a module's *own* weight updates make to its
  output on its current input. This is the quantity the hidden-lr rules are about (the spectral
  argument: Muon's update moves a layer's output by ~ lr * sqrt(width)), so it is the sharpest
  test of "adam-mup" (lr ~ 1/m) versus "spectral" (lr ~ 1/sqrt(m)).

Layer types: the embedding output (the first block's input), the attention and MLP blocks' outputs,
the residual stream entering the final norm and the readout logits ("update" only for the modules
with weights: attn, mlp, logits). `CoordCheck.spread` fits log2(value) against log2(width): slope 0
is flat, 0.5 grows as sqrt(width), -0.5 vanishes as 1/sqrt(width).

The readout is drawn at init_std (telescope.core.scaling says why not zero), so gradients reach
the body from the first step; Muon's orthogonalized update then moves each hidden matrix by an
amount its learning rate sets, not the gradient's size.
Training is the trial engine itself (`Engine.step`), so what is checked is what a sweep trains.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from telescope.core.contract import HIDDEN_LR_RULES, PARAMETERIZATIONS, TrialConfig
from telescope.core.numbers import json_safe
from telescope.errors import ConfigError
from telescope.train.data import train_batches, val_batches
from telescope.train.model import GPT
from telescope.train.trial import build_engine, resolve_device, torch_settings

LAYERS = ("embedding", "attn", "mlp", "residual", "logits")
WEIGHTED = ("attn", "mlp", "logits")  # layer types that are modules with weights of their own
METRIC_LAYERS = {"scale": LAYERS, "delta": LAYERS, "update": WEIGHTED}
METRICS = tuple(METRIC_LAYERS)
METRIC_LABELS = {"scale": "|h_t|", "delta": "|h_t - h_0|", "update": "|f(x; W_t) - f(x; W_0)|"}


@dataclass(frozen=True)
class Spread:
    slope: float  # least-squares d log2(value) / d log2(width); 0 = flat in width
    ratio: float  # max / min over widths


@dataclass
class CoordCheck:
    """`values[metric][variant][layer][t][i]`: the seed-mean activation after t steps (0..steps)
    at width widths[i]. delta and update are 0 at t = 0 by definition."""

    optimizer: str
    lr: float
    init_std: float
    base_width: int
    widths: list[int]
    steps: int
    seeds: int
    variants: list[str]  # "sp", and "mup" (adamw) or "mup/adam-mup", "mup/spectral" (muon)
    values: dict[str, dict[str, dict[str, list[list[float]]]]] = field(repr=False)

    def spread(self, metric: str, variant: str, layer: str, t: int) -> Spread:
        v = np.asarray(self.values[metric][variant][layer][t], dtype=float)
        if not (np.all(np.isfinite(v)) and np.all(v > 0)):
            return Spread(math.nan, math.nan)  # diverged, or nothing to measure (t = 0)
        slope = np.polyfit(np.log2(self.widths), np.log2(v), 1)[0]
        return Spread(float(slope), float(v.max() / v.min()))

    def spreads(self) -> dict[str, dict[str, dict[str, list[dict[str, float]]]]]:
        """Every spread, `[metric][variant][layer][t - 1]` for t = 1..steps."""
        return {
            metric: {
                variant: {
                    layer: [asdict(self.spread(metric, variant, layer, t)) for t in range(1, self.steps + 1)]
                    for layer in layers
                }
                for variant in self.variants
            }
            for metric, layers in METRIC_LAYERS.items()
        }

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per metric and variant, at the last step: the layer with the largest |slope| (a diverged
        layer counts as infinitely bad), that |slope|, and the largest max/min ratio."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for metric, layers in METRIC_LAYERS.items():
            out[metric] = {}
            for variant in self.variants:
                spreads = [self.spread(metric, variant, layer, self.steps) for layer in layers]
                bad = [abs(s.slope) if math.isfinite(s.slope) else math.inf for s in spreads]
                worst = int(np.argmax(bad))
                out[metric][variant] = {
                    "worst_layer": layers[worst],
                    "worst_abs_slope": bad[worst],
                    "max_ratio": max(s.ratio if math.isfinite(s.ratio) else math.inf for s in spreads),
                }
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: non-finite numbers (divergence) become None."""
        data = asdict(self)
        data.update(layers={m: list(ls) for m, ls in METRIC_LAYERS.items()},
                    spreads=self.spreads(), summary=self.summary())
        return json_safe(data)




def variant_configs(
    base_cfg: TrialConfig, parameterizations: Sequence[str], hidden_lr_rules: Sequence[str] | None
) -> dict[str, TrialConfig]:
    """Variant label -> config. The hidden-lr rule exists only for muP under Muon, so SP (and
    AdamW) runs once; asking AdamW for several rules is an error, not two identical columns."""
    if not parameterizations or any(p not in PARAMETERIZATIONS for p in parameterizations):
        raise ConfigError("parameterizations", f"must be a non-empty subset of {', '.join(PARAMETERIZATIONS)}; "
                                               f"got {list(parameterizations)!r}")
    rules = list(hidden_lr_rules or [base_cfg.hidden_lr_rule])
    if any(r not in HIDDEN_LR_RULES for r in rules) or len(set(rules)) != len(rules):
        raise ConfigError("hidden_lr_rule", f"must be distinct values of {', '.join(HIDDEN_LR_RULES)}; got {rules!r}")
    if base_cfg.optimizer != "muon" and len(rules) > 1:
        raise ConfigError("hidden_lr_rule", "only Muon has a choice of hidden-lr rule; use --optimizer muon")
    variants: dict[str, TrialConfig] = {}
    for p in dict.fromkeys(parameterizations):
        if p == "mup" and base_cfg.optimizer == "muon":
            for rule in rules:
                variants[f"mup/{rule}"] = base_cfg.replace(parameterization=p, hidden_lr_rule=rule)
        else:
            variants[p] = base_cfg.replace(parameterization=p)
    return variants


def _weighted_modules(model: GPT) -> dict[str, list[nn.Module]]:
    """The modules of each WEIGHTED layer type."""
    return {"attn": [b.attn for b in model.blocks], "mlp": [b.mlp for b in model.blocks], "logits": [model.lm_head]}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's current parameters, detached copies. mup's infshape rides along: MuReadout reads
    its width multiplier from the weight, and functional_call swaps these in for the weight."""
    params = {}
    for name, p in module.named_parameters():
        params[name] = p.detach().clone()
        if hasattr(p, "infshape"):
            params[name].infshape = p.infshape
    return params


@contextlib.contextmanager
def _recording(model: GPT, init: dict[nn.Module, dict[str, torch.Tensor]] | None) -> Iterator[dict]:
    """Forward hooks collecting acts[metric][layer] = one tensor per module. With `init` (the
    modules' parameters at t = 0), also the own-update effect: output minus the same module run
    on the same input with its initial weights."""
    acts: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer: [] for layer in METRIC_LAYERS[m]}
                                                      for m in ("scale", "update")}
    rerun = []  # non-empty while a module reruns with its initial weights: its hooks fire again

    def keep(layer: str, pre: bool):
        def hook(module, args, output=None):
            if rerun:
                return
            acts["scale"][layer].append((args[0] if pre else output).detach().float())
            if not pre and init is not None:
                rerun.append(module)
                try:
                    before = functional_call(module, init[module], args)
                finally:
                    rerun.pop()
                acts["update"][layer].append((output - before).detach().float())
        return hook

    handles = [model.blocks[0].register_forward_pre_hook(keep("embedding", pre=True)),
               model.ln_f.register_forward_pre_hook(keep("residual", pre=True))]
    for layer, modules in _weighted_modules(model).items():
        handles += [m.register_forward_hook(keep(layer, pre=False)) for m in modules]
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def _mean_abs(tensors: list[torch.Tensor]) -> float:
    return float(np.mean([x.abs().mean().item() for x in tensors]))


def _run(cfg: TrialConfig) -> dict[str, np.ndarray]:
    """One width and seed: metric -> (steps + 1, len(METRIC_LAYERS[metric])) array."""
    with torch_settings(cfg, resolve_device(cfg.device)):
        engine = build_engine(cfg)
        model = engine.model
        # one fixed probe batch for every width, seed and step, so h_t - h_0 compares like with like
        probe = val_batches(engine.corpus, cfg.batch_size, cfg.seq_len, 1)[0][0].to(engine.device)
        batches = train_batches(engine.corpus, cfg.batch_size, cfg.seq_len, cfg.seed)
        init = {m: _snapshot(m) for modules in _weighted_modules(model).values() for m in modules}
        out = {metric: np.zeros((cfg.steps + 1, len(layers))) for metric, layers in METRIC_LAYERS.items()}
        h0: dict[str, list[torch.Tensor]] = {}
        for t in range(cfg.steps + 1):
            if t:
                x, y = next(batches)
                engine.step(t - 1, x.to(engine.device), y.to(engine.device))
            with torch.no_grad(), engine.autocast(), _recording(model, init if t else None) as acts:
                model(probe)
            h0 = h0 or acts["scale"]
            for j, layer in enumerate(LAYERS):
                out["scale"][t, j] = _mean_abs(acts["scale"][layer])
                out["delta"][t, j] = _mean_abs([h - g for h, g in zip(acts["scale"][layer], h0[layer])])
            if t:
                for j, layer in enumerate(WEIGHTED):
                    out["update"][t, j] = _mean_abs(acts["update"][layer])
    return out


def coord_check(
    base_cfg: TrialConfig,
    widths: Sequence[int],
    steps: int,
    seeds: int,
    parameterizations: Sequence[str] = ("mup", "sp"),
    hidden_lr_rules: Sequence[str] | None = None,
) -> CoordCheck:
    """Run the coordinate check. `base_cfg` fixes everything but the width, parameterization,
    hidden-lr rule (default: base_cfg's) and seed (base_cfg.seed .. + seeds - 1). The lr is held
    at its peak: warmup would hide the very first steps the check is about."""
    widths = sorted(set(widths))
    if len(widths) < 2:
        raise ConfigError("widths", f"need at least two distinct widths to measure a spread; got {widths!r}")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError("seeds", f"must be a positive whole number; got {seeds!r}")
    base_cfg = base_cfg.replace(steps=steps, warmup_frac=0.0, final_lr_frac=1.0, eval_interval=steps)
    variants = variant_configs(base_cfg, parameterizations, hidden_lr_rules)
    # every config is built (and so validated: width vs head_dim, base_width) before any training
    runs = {name: [[cfg.replace(width=w, seed=base_cfg.seed + s) for s in range(seeds)] for w in widths]
            for name, cfg in variants.items()}
    values: dict[str, dict[str, dict[str, list[list[float]]]]] = {m: {} for m in METRICS}
    for name, per_width in runs.items():
        results = [[_run(cfg) for cfg in per_seed] for per_seed in per_width]
        for metric, layers in METRIC_LAYERS.items():
            # (width, step, layer), the mean over seeds
            data = np.array([np.mean([r[metric] for r in per_seed], axis=0) for per_seed in results])
            values[metric][name] = {layer: data[:, :, j].T.tolist() for j, layer in enumerate(layers)}
    return CoordCheck(
        optimizer=base_cfg.optimizer, lr=base_cfg.lr, init_std=base_cfg.init_std,
        base_width=base_cfg.base_width, widths=widths, steps=steps, seeds=seeds,
        variants=list(variants), values=values,
    )


def plot(check: CoordCheck, path: str, max_steps_shown: int = 3) -> None:
    """mup-style figure: a column per variant, a row per (metric, step), x = width (log2),
    y = the metric (log), a line per layer type labelled with its slope. Rows share the y axis,
    so the columns compare at a glance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted({int(round(t)) for t in np.linspace(1, check.steps, min(check.steps, max_steps_shown))})
    rows = [(metric, t) for metric in METRICS for t in shown]
    fig, axes = plt.subplots(len(rows), len(check.variants), squeeze=False, sharex=True, sharey="row",
                             figsize=(3.4 * len(check.variants), 2.4 * len(rows)))
    widths = np.asarray(check.widths)
    for r, (metric, t) in enumerate(rows):
        for c, variant in enumerate(check.variants):
            ax = axes[r][c]
            for layer in METRIC_LAYERS[metric]:
                v = np.asarray(check.values[metric][variant][layer][t], dtype=float)
                ok = np.isfinite(v) & (v > 0)
                slope = check.spread(metric, variant, layer, t).slope
                ax.plot(widths[ok], v[ok], marker="o", ms=3, color=f"C{LAYERS.index(layer)}",
                        label=f"{layer} {slope:+.2f}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{variant}, t={t}", fontsize=9)
            ax.legend(fontsize=6, title="layer, slope", title_fontsize=6)
            if c == 0:
                ax.set_ylabel(f"mean {METRIC_LABELS[metric]}", fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("width", fontsize=8)
    fig.suptitle(f"coordinate check: {check.optimizer}, base lr {check.lr:g}, init_std {check.init_std:g}, "
                 f"base width {check.base_width}, mean of {check.seeds} seed(s)", fontsize=10)
    # fixed spacing: tight_layout costs seconds on a grid this size
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.3 / len(rows), top=1 - 0.35 / len(rows),
                        hspace=0.35, wspace=0.08)
    fig.savefig(path, dpi=80)
    plt.close(fig)
