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

The machinery is the model's own: `trace` records any torch model through forward hooks on named
modules (`Layer`), and `collect` averages the runs. `coord_check` runs the built-in GPT from a
TrialConfig; telescope.train.muon_mup.coord_check runs a user's model through the same two.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from telescope.core.contract import HIDDEN_LR_RULES, PARAMETERIZATIONS, TrialConfig
from telescope.core.numbers import json_safe
from telescope.errors import ConfigError
from telescope.train.data import train_batches, val_batches
from telescope.train.trial import build_engine, resolve_device, torch_settings

METRICS = ("scale", "delta", "update")
METRIC_LABELS = {"scale": "|h_t|", "delta": "|h_t - h_0|", "update": "|f(x; W_t) - f(x; W_0)|"}


@dataclass(frozen=True)
class Layer:
    """Where one layer type's activations are read: the output of each of `modules` (names in
    model.named_modules()), and the change its own weights make to it; or, with input=True, what
    each module receives (no own update)."""

    modules: tuple[str, ...]
    input: bool = False

    @classmethod
    def of(cls, spec: Layer | Sequence[str]) -> Layer:
        return spec if isinstance(spec, Layer) else cls(tuple(spec))


def gpt_layers(depth: int) -> dict[str, Layer]:
    """The built-in GPT's layer types: the first block's input, every block's attention and MLP,
    the residual stream entering the final norm, the logits."""
    blocks = [f"blocks.{i}" for i in range(depth)]
    return {"embedding": Layer(("blocks.0",), input=True),
            "attn": Layer(tuple(f"{b}.attn" for b in blocks)),
            "mlp": Layer(tuple(f"{b}.mlp" for b in blocks)),
            "residual": Layer(("ln_f",), input=True),
            "logits": Layer(("lm_head",))}


def metric_layers(layers: Mapping[str, Layer]) -> dict[str, tuple[str, ...]]:
    """The labels each metric measures: every layer for scale and delta, the modules' outputs for
    update."""
    every = tuple(layers)
    return {"scale": every, "delta": every, "update": tuple(k for k, layer in layers.items() if not layer.input)}


LAYERS = tuple(gpt_layers(1))
METRIC_LAYERS = metric_layers(gpt_layers(1))
WEIGHTED = METRIC_LAYERS["update"]  # the GPT's layer types that are modules with weights of their own


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

    @property
    def layers(self) -> dict[str, list[str]]:
        """The layer labels each metric has, in the order they were recorded."""
        return {metric: list(self.values[metric][self.variants[0]]) for metric in METRICS}

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
            for metric, layers in self.layers.items()
        }

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per metric and variant, at the last step: the layer with the largest |slope| (a diverged
        layer counts as infinitely bad), that |slope|, and the largest max/min ratio."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for metric, layers in self.layers.items():
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
        data.update(layers=self.layers, spreads=self.spreads(), summary=self.summary())
        return json_safe(data)




def variants(optimizer: str, parameterizations: Sequence[str], hidden_lr_rules: Sequence[str] | None,
             default_rule: str) -> dict[str, tuple[str, str]]:
    """Variant label -> (parameterization, hidden-lr rule). The rule exists only for muP under
    Muon, so SP (and AdamW) runs once; asking AdamW for several rules is an error, not two
    identical columns."""
    if not parameterizations or any(p not in PARAMETERIZATIONS for p in parameterizations):
        raise ConfigError("parameterizations", f"must be a non-empty subset of {', '.join(PARAMETERIZATIONS)}; "
                                               f"got {list(parameterizations)!r}")
    rules = list(hidden_lr_rules or [default_rule])
    if any(r not in HIDDEN_LR_RULES for r in rules) or len(set(rules)) != len(rules):
        raise ConfigError("hidden_lr_rule", f"must be distinct values of {', '.join(HIDDEN_LR_RULES)}; got {rules!r}")
    if optimizer != "muon" and len(rules) > 1:
        raise ConfigError("hidden_lr_rule", "only Muon has a choice of hidden-lr rule; use --optimizer muon")
    out: dict[str, tuple[str, str]] = {}
    for p in dict.fromkeys(parameterizations):
        if p == "mup" and optimizer == "muon":
            for rule in rules:
                out[f"mup/{rule}"] = (p, rule)
        else:
            out[p] = (p, rules[0])
    return out


def variant_configs(
    base_cfg: TrialConfig, parameterizations: Sequence[str], hidden_lr_rules: Sequence[str] | None
) -> dict[str, TrialConfig]:
    """Variant label -> config (see `variants`); a lone variant keeps base_cfg's hidden-lr rule."""
    return {name: base_cfg.replace(parameterization=p, hidden_lr_rule=rule) if name.startswith("mup/")
            else base_cfg.replace(parameterization=p)
            for name, (p, rule) in variants(base_cfg.optimizer, parameterizations, hidden_lr_rules,
                                            base_cfg.hidden_lr_rule).items()}


def check_widths(widths: Sequence[int], seeds: int) -> list[int]:
    """The distinct widths, sorted; at least two, and a positive number of seeds."""
    widths = sorted(set(widths))
    if len(widths) < 2:
        raise ConfigError("widths", f"need at least two distinct widths to measure a spread; got {widths!r}")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError("seeds", f"must be a positive whole number; got {seeds!r}")
    return widths


def _modules(model: nn.Module, layers: Mapping[str, Layer]) -> dict[str, list[nn.Module]]:
    found = dict(model.named_modules())
    missing = [name for layer in layers.values() for name in layer.modules if name not in found]
    if missing:
        raise ConfigError("layers", f"no module named {', '.join(map(repr, missing))} in the model; "
                                    f"name modules as model.named_modules() does")
    return {label: [found[name] for name in layer.modules] for label, layer in layers.items()}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's current parameters, detached copies, for functional_call to swap in."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@contextlib.contextmanager
def _recording(modules: Mapping[str, list[nn.Module]], layers: Mapping[str, Layer],
               init: dict[nn.Module, dict[str, torch.Tensor]] | None) -> Iterator[dict]:
    """Forward hooks collecting acts[metric][layer] = one tensor per module call. With `init` (the
    modules' parameters at t = 0), also the own-update effect: output minus the same module run
    on the same input with its initial weights."""
    acts: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer: [] for layer in labels}
                                                      for m, labels in metric_layers(layers).items()
                                                      if m in ("scale", "update")}
    rerun = []  # non-empty while a module reruns with its initial weights: its hooks fire again

    def keep(layer: str, pre: bool):
        def hook(module, args, kwargs, output=None):
            if rerun:
                return
            seen = args[0] if pre else output
            if not isinstance(seen, torch.Tensor):
                raise ConfigError("layers", f"{layer}: a module's {'input' if pre else 'output'} is a "
                                            f"{type(seen).__name__}, not a tensor; record another module")
            acts["scale"][layer].append(seen.detach().float())
            if not pre and init is not None:
                rerun.append(module)
                try:
                    before = functional_call(module, init[module], args, kwargs)
                finally:
                    rerun.pop()
                acts["update"][layer].append((output - before).detach().float())
        return hook

    handles = []
    for label, layer in layers.items():
        for m in modules[label]:
            if layer.input:
                handles.append(m.register_forward_pre_hook(keep(label, pre=True), with_kwargs=True))
            else:
                handles.append(m.register_forward_hook(keep(label, pre=False), with_kwargs=True))
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def _mean_abs(tensors: list[torch.Tensor]) -> float:
    return float(np.mean([x.abs().mean().item() for x in tensors]))


def trace(
    model: nn.Module,
    step: Callable[[int, torch.Tensor, torch.Tensor], object],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    probe: torch.Tensor,
    steps: int,
    layers: Mapping[str, Layer],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, dict[str, np.ndarray]]:
    """One model's run: metric -> layer -> its value after t = 0..steps optimizer steps. `step(t,
    x, y)` takes one optimizer step at 0-based position t on the next of `batches`; `model(probe)`
    runs (under `autocast`) after each, with `layers`' modules hooked."""
    modules = _modules(model, layers)
    init = {m: _snapshot(m) for label in metric_layers(layers)["update"] for m in modules[label]}
    out = {metric: {layer: np.zeros(steps + 1) for layer in labels} for metric, labels in metric_layers(layers).items()}
    h0: dict[str, list[torch.Tensor]] = {}
    for t in range(steps + 1):
        if t:
            step(t - 1, *next(batches))
        with torch.no_grad(), autocast(), _recording(modules, layers, init if t else None) as acts:
            model(probe)
        silent = [layer for layer, seen in acts["scale"].items() if not seen]
        if silent:
            raise ConfigError("layers", f"{', '.join(silent)}: the module(s) never ran in the model's forward; "
                                        f"record modules that are called")
        h0 = h0 or acts["scale"]
        for layer in out["scale"]:
            out["scale"][layer][t] = _mean_abs(acts["scale"][layer])
            out["delta"][layer][t] = _mean_abs([h - g for h, g in zip(acts["scale"][layer], h0[layer])])
        if t:
            for layer in out["update"]:
                out["update"][layer][t] = _mean_abs(acts["update"][layer])
    return out


Job = TypeVar("Job")


def collect(runs: Mapping[str, Sequence[Sequence[Job]]],
            run: Callable[[Job], dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, dict[str, list[list[float]]]]]:
    """CoordCheck.values from `runs[variant][width index][seed index]`, each traced by `run`:
    the mean over seeds, as values[metric][variant][layer][t][width index]."""
    values: dict[str, dict[str, dict[str, list[list[float]]]]] = {m: {} for m in METRICS}
    for name, per_width in runs.items():
        results = [[run(job) for job in per_seed] for per_seed in per_width]
        for metric in METRICS:
            # (width, step) per layer, the mean over seeds
            values[metric][name] = {
                layer: np.array([np.mean([r[metric][layer] for r in per_seed], axis=0) for per_seed in results]).T.tolist()
                for layer in results[0][0][metric]
            }
    return values


def _run(cfg: TrialConfig) -> dict[str, dict[str, np.ndarray]]:
    """One width and seed of the built-in GPT, trained by the trial engine."""
    with torch_settings(cfg, resolve_device(cfg.device)):
        engine = build_engine(cfg)
        device = engine.device
        # one fixed probe batch for every width, seed and step, so h_t - h_0 compares like with like
        probe = val_batches(engine.corpus, cfg.batch_size, cfg.seq_len, 1)[0][0].to(device)
        batches = ((x.to(device), y.to(device)) for x, y in train_batches(engine.corpus, cfg.batch_size,
                                                                          cfg.seq_len, cfg.seed))
        return trace(engine.model, engine.step, batches, probe, cfg.steps, gpt_layers(cfg.depth), engine.autocast)


def coord_check(
    base_cfg: TrialConfig,
    widths: Sequence[int],
    steps: int,
    seeds: int,
    parameterizations: Sequence[str] = ("mup", "sp"),
    hidden_lr_rules: Sequence[str] | None = None,
) -> CoordCheck:
    """Run the coordinate check on the built-in GPT. `base_cfg` fixes everything but the width,
    parameterization, hidden-lr rule (default: base_cfg's) and seed (base_cfg.seed .. + seeds -
    1). The lr is held at its peak: warmup would hide the very first steps the check is about."""
    widths = check_widths(widths, seeds)
    base_cfg = base_cfg.replace(steps=steps, warmup_frac=0.0, final_lr_frac=1.0, eval_interval=steps)
    variants = variant_configs(base_cfg, parameterizations, hidden_lr_rules)
    # every config is built (and so validated: width vs head_dim, base_width) before any training
    runs = {name: [[cfg.replace(width=w, seed=base_cfg.seed + s) for s in range(seeds)] for w in widths]
            for name, cfg in variants.items()}
    return CoordCheck(
        optimizer=base_cfg.optimizer, lr=base_cfg.lr, init_std=base_cfg.init_std,
        base_width=base_cfg.base_width, widths=widths, steps=steps, seeds=seeds,
        variants=list(variants), values=collect(runs, _run),
    )


def figure(check: CoordCheck, max_steps_shown: int = 3):
    """mup-style figure: a column per variant, a row per (metric, step), x = width (log2),
    y = the metric (log), a line per layer type labelled with its slope. Rows share the y axis,
    so the columns compare at a glance. Each panel's legend sits to its right, outside the axes,
    so it never hides a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted({int(round(t)) for t in np.linspace(1, check.steps, min(check.steps, max_steps_shown))})
    rows = [(metric, t) for metric in METRICS for t in shown]
    layers = check.layers
    colour = {layer: f"C{i % 10}" for i, layer in enumerate(layers["scale"])}
    # inches: the panel, the legend beside it (as wide as its longest "layer +0.00" line at 6 pt),
    # the y label's margin; fixed spacing, since tight_layout costs seconds on a grid this size
    panel_w, row_h, left, pad = 2.6, 2.4, 0.75, 0.1
    legend_w = 0.45 + 0.05 * (max(map(len, layers["scale"])) + 6)
    fig_w = left + len(check.variants) * (panel_w + legend_w) + pad
    fig, axes = plt.subplots(len(rows), len(check.variants), squeeze=False, sharex=True, sharey="row",
                             figsize=(fig_w, row_h * len(rows)))
    widths = np.asarray(check.widths)
    for r, (metric, t) in enumerate(rows):
        for c, variant in enumerate(check.variants):
            ax = axes[r][c]
            for layer in layers[metric]:
                v = np.asarray(check.values[metric][variant][layer][t], dtype=float)
                ok = np.isfinite(v) & (v > 0)
                slope = check.spread(metric, variant, layer, t).slope
                ax.plot(widths[ok], v[ok], marker="o", ms=3, color=colour[layer], label=f"{layer} {slope:+.2f}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{variant}, t={t}", fontsize=9)
            ax.legend(fontsize=6, title="layer, slope", title_fontsize=6, loc="upper left",
                      bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
            if c == 0:
                ax.set_ylabel(f"mean {METRIC_LABELS[metric]}", fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("width", fontsize=8)
    fig.suptitle(f"coordinate check: {check.optimizer}, base lr {check.lr:g}, init_std {check.init_std:g}, "
                 f"base width {check.base_width}, mean of {check.seeds} seed(s)", fontsize=10)
    fig.subplots_adjust(left=left / fig_w, right=(fig_w - legend_w - pad) / fig_w, bottom=0.3 / len(rows),
                        top=1 - 0.35 / len(rows), hspace=0.35, wspace=legend_w / panel_w)
    return fig


def plot(check: CoordCheck, path: str, max_steps_shown: int = 3) -> None:
    """Write `figure(check)` to `path` (.png, .pdf or .svg)."""
    fig = figure(check, max_steps_shown)
    import matplotlib.pyplot as plt  # after figure() has chosen the backend

    fig.savefig(path, dpi=80)
    plt.close(fig)
