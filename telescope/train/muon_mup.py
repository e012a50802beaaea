"""muP for Muon on any torch model: parameter roles in, inits and optimizers out.

In the spirit of microsoft/mup's small surface (`set_base_shapes`, `MuReadout`, `MuAdamW`,
`get_coord_data`), for Muon on the hidden matrices and AdamW on the rest. The built-in GPT
(telescope.train.model, telescope.train.optim) goes through these same functions; every number
comes from telescope.core.scaling, so `telescope export` and a model built here agree.

    from telescope.train import muon_mup as mu

    class MyModel(nn.Module):                    # width is the only thing that changes
        def __init__(self, width): ...           # readout: mu.MuReadout(width, vocab)

    model = MyModel(width)
    mu.init_weights(model, width=width, base_width=64, init_std=0.02)
    opts = mu.optimizers(model, width=width, base_width=64, lr=3e-3, weight_decay=0.1)
    ...                                          # loss.backward(); for opt in opts: opt.step()

The surface:
    roles(model, rules)                    parameter name -> role: hidden, embedding, norm or readout
    MuReadout(in, out, bias)               the readout layer: logits = output_mult * (W h) + b
    init_weights(model, width=, ...)       draw every parameter by its role; set the readout multiplier
    optimizers(model, width=, lr=, ...)    [Muon over hidden matrices, AdamW over the rest]
    optimizers_from_export(doc, model)     the same, from a `telescope export` document
    coord_check(make_model, widths, ...)   telescope's coordinate check on the model
    group_values(...)                      (telescope.core.scaling) every per-group number, torch-free

Roles. A parameter's role decides its init, learning rate, weight decay and optimizer (the table in
telescope.core.scaling). `rules` (a dict of glob pattern -> role, matched against the full
parameter name with fnmatch, or a function (name, param) -> role or None) are tried first; then
the defaults: a 1-D (or 0-D) parameter is "norm" (gains start at 1, biases at 0; neither
decayed); a weight of an nn.Embedding is "embedding", of a (mup) MuReadout "readout"; then the name
patterns in DEFAULT_RULES; any other matrix is "hidden". The library assumes every width
dimension of the model scales with width / base_width (d, heads x head_dim, mlp_ratio x d), as
mup's rules do for a matrix whose fan-in grows with width.

Each param group carries its peak lr under "peak_lr" and its role under "group";
telescope.train.optim.set_lr applies a schedule to it.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import mup
import torch
import torch.nn as nn
import torch.nn.functional as F

from telescope.core.optimizers import (ADAMW_BETAS, ADAMW_EPS, ADAMW_FUSED, MUON_SETTINGS, WEIGHT_DECAY_MODE,
                                      optimizer_of_group)
from telescope.core.scaling import GROUPS, init_stds, lr_and_weight_decay, output_mult
from telescope.errors import ConfigError
from telescope.train.muon import MUON_KWARGS, Muon

if TYPE_CHECKING:
    from telescope.train.coordcheck import CoordCheck, Layer

Rules = Union[Mapping[str, str], Callable[[str, nn.Parameter], "str | None"], None]

# Name patterns tried after the user's rules, a parameter's ndim and its module's type. The
# readout patterns are anchored at the model's top level: many models have an `output` or `head`
# submodule inside each block that is a hidden layer.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("lm_head.*", "readout"), ("head.*", "readout"), ("readout.*", "readout"), ("output.*", "readout"),
    ("unembed*", "readout"), ("classifier.*", "readout"),
    ("*embed*", "embedding"), ("*wte.*", "embedding"), ("*wpe.*", "embedding"), ("*tok_emb*", "embedding"),
    ("*pos_emb*", "embedding"),
)


class MuReadout(mup.MuReadout):
    """The readout layer: logits = output_mult * (W h) + b, with output_mult = 1 / width_mult under
    muP (1 under sp), set by `init_weights`. A mup.MuReadout, so mup's own tools (`set_base_shapes`
    and its checks) see a readout; but the multiplier is this attribute, not mup's
    `output_mult / width_mult()`, so no base shapes are needed. The factor
    multiplies whichever of W and h is smaller (the product is the same), one small op instead of
    two over the activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, output_mult: float = 1.0,
                 device: Any = None, dtype: Any = None):
        super().__init__(in_features, out_features, bias=bias, output_mult=output_mult, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mult = self.output_mult
        if mult == 1.0:
            return F.linear(x, self.weight, self.bias)
        if self.weight.numel() < x.numel():
            return F.linear(x, self.weight * mult, self.bias)
        return F.linear(x * mult, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_mult={self.output_mult:g}"


def _owners(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Full parameter name -> (name, module) of the module holding it."""
    owners = {}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            owners[f"{module_name}.{name}" if module_name else name] = (module_name, module)
    return owners


def _user_role(name: str, p: nn.Parameter, rules: Rules) -> str | None:
    if rules is None:
        return None
    if callable(rules):
        return rules(name, p)
    if not isinstance(rules, Mapping):
        raise TypeError(f"rules must be a dict of pattern -> role or a function; got {type(rules).__name__}")
    matched = {pattern: role for pattern, role in rules.items() if fnmatch.fnmatchcase(name, pattern)}
    if len(set(matched.values())) > 1:
        raise ConfigError("rules", f"parameter {name!r} matches patterns with different roles ({matched}); "
                                   f"make the patterns disjoint")
    return next(iter(matched.values()), None)


def roles(model: nn.Module, rules: Rules = None) -> dict[str, str]:
    """Every parameter's role (one of telescope.core.scaling.GROUPS), by name as in
    model.named_parameters(); see the module docstring for how `rules` and the defaults decide."""
    owners = _owners(model)
    out = {}
    for name, p in model.named_parameters():
        role = _user_role(name, p, rules)
        if role is None:
            module = owners[name][1]
            if p.ndim <= 1:
                role = "norm"
            elif isinstance(module, nn.Embedding):
                role = "embedding"
            elif isinstance(module, mup.MuReadout):  # ours, or mup's own
                role = "readout"
            else:
                role = next((r for pattern, r in DEFAULT_RULES if fnmatch.fnmatchcase(name, pattern)), "hidden")
        if role not in GROUPS:
            raise ConfigError("rules", f"parameter {name!r} got role {role!r}; a role is one of {', '.join(GROUPS)}")
        out[name] = role
    return out


def _by_role(model: nn.Module, role_of: Mapping[str, str]) -> dict[str, list[nn.Parameter]]:
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        groups[role_of[name]].append(p)
    return groups


def group_parameters(model: nn.Module, rules: Rules = None) -> dict[str, list[nn.Parameter]]:
    """Parameters by role, in model.named_parameters() order; each parameter in exactly one group."""
    return _by_role(model, roles(model, rules))


def _check_readouts(model: nn.Module, role_of: Mapping[str, str], mult: float, fix: str = "") -> None:
    """Every readout parameter sits in a layer that multiplies its output by `mult` (`fix` says
    how to make a MuReadout's multiplier right)."""
    for name, (module_name, module) in _owners(model).items():
        if role_of.get(name) != "readout":
            continue
        if isinstance(module, MuReadout):
            if not math.isclose(module.output_mult, mult, rel_tol=1e-12):
                raise ConfigError("width", f"{module_name} multiplies the logits by {module.output_mult:g}, but "
                                           f"this width wants {mult:g}; {fix}")
        elif mult != 1.0:
            raise ConfigError("rules", f"parameter {name!r} is the readout, but {module_name or 'the model'} is a "
                                       f"{type(module).__name__}: muP's readout multiplies the logits by "
                                       f"1/width_mult; build it as telescope.train.muon_mup.MuReadout(in_features, "
                                       f"out_features), or give {name!r} another role in rules")


@torch.no_grad()
def init_weights(model: nn.Module, *, width: int, base_width: int, init_std: float, parameterization: str = "mup",
                 rules: Rules = None, generator: torch.Generator | None = None) -> None:
    """muP's init for `model` at `width`: every parameter drawn from a normal with its role's std
    (hidden matrices init_std / sqrt(width / base_width), embeddings and readout init_std), norm
    gains set to 1 and biases to 0, in model.named_parameters() order from `generator`; and every
    MuReadout's output multiplier set to 1 / (width / base_width) (1 under sp)."""
    m = width / base_width
    stds = init_stds(m, init_std, parameterization)
    role_of = roles(model, rules)
    for name, p in model.named_parameters():
        role = role_of[name]
        if role == "norm":
            p.fill_(0.0 if name.rsplit(".", 1)[-1] == "bias" else 1.0)
        else:
            p.normal_(0.0, stds[role], generator=generator)
    mult = output_mult(m, parameterization)
    for module in model.modules():
        if isinstance(module, MuReadout):
            module.output_mult = mult
    _check_readouts(model, role_of, mult)  # a readout that is not a MuReadout


def _build(model: nn.Module, role_of: dict[str, str], lr: Mapping[str, float], weight_decay: Mapping[str, float],
           optimizer_of_group: Mapping[str, str], muon_kwargs: Mapping[str, Any],
           adamw_kwargs: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
    """[Muon over its groups, AdamW over the rest], each group with lr, peak_lr, weight_decay and
    its role under "group"; a group with no parameters, and an optimizer with no groups, left out."""
    for name, p in model.named_parameters():
        if optimizer_of_group[role_of[name]] == "muon" and p.ndim != 2:
            raise ConfigError("rules", f"parameter {name!r} has shape {tuple(p.shape)}, but Muon takes 2-D matrices "
                                       f"only; give it another role in rules, or use optimizer 'adamw'")
    params = _by_role(model, role_of)

    def group(g: str) -> dict:
        # torch decays as W <- W * (1 - lr * wd) in both Muon and AdamW; scaling keeps lr*wd fixed
        return {"params": params[g], "lr": lr[g], "peak_lr": lr[g], "weight_decay": weight_decay[g], "group": g}

    by_optimizer = {kind: [group(g) for g in GROUPS if optimizer_of_group[g] == kind and params[g]]
                    for kind in ("muon", "adamw")}
    out: list[torch.optim.Optimizer] = []
    if by_optimizer["muon"]:
        out.append(Muon(by_optimizer["muon"], **muon_kwargs))
    if by_optimizer["adamw"]:
        out.append(torch.optim.AdamW(by_optimizer["adamw"], **adamw_kwargs))
    return out


def optimizers(model: nn.Module, *, width: int, base_width: int, lr: float, weight_decay: float,
               optimizer: str = "muon", hidden_lr_rule: str = "spectral", parameterization: str = "mup",
               rules: Rules = None, ns_dtype: str = "bf16",
               shard_newton_schulz: bool = False) -> list[torch.optim.Optimizer]:
    """The optimizers for `model` at `width`: [Muon over the hidden matrices, AdamW over the rest],
    or [AdamW over everything] for optimizer "adamw", each group's peak lr and weight decay from
    telescope.core.scaling ("spectral": hidden lr / sqrt(m); "adam-mup", the paper's: lr / m).
    Muon and AdamW use telescope.core.optimizers' settings, as every trial does; `ns_dtype` is
    Muon's Newton-Schulz arithmetic ("bf16", torch's, or "fp32": faster on CPUs without native bf16
    matmuls, see telescope.train.muon.Muon); `shard_newton_schulz` shares Muon's Newton-Schulz
    among torch.distributed's ranks (telescope.train.muon.Muon). Checks that the
    model's readout multiplies its logits as muP wants at this width (see `init_weights`)."""
    m = width / base_width
    lrs, wds = lr_and_weight_decay(m, lr, weight_decay, optimizer=optimizer, hidden_lr_rule=hidden_lr_rule,
                                   parameterization=parameterization)
    role_of = roles(model, rules)
    _check_readouts(model, role_of, output_mult(m, parameterization),
                    f"call init_weights(model, width={width}, base_width={base_width}, ...) first")
    # fused AdamW: one kernel over all tensors, on CUDA as on CPU; several times faster than torch's
    # default per-tensor loop on CPU (bench/engine.py's widths), where the default is not even foreach
    muon_kwargs = {**MUON_KWARGS, "ns_dtype": ns_dtype, "shard_newton_schulz": shard_newton_schulz}
    return _build(model, role_of, lrs, wds, optimizer_of_group(optimizer), muon_kwargs,
                  {"betas": ADAMW_BETAS, "eps": ADAMW_EPS, "fused": ADAMW_FUSED})


def _entry(block: Any, key: str, where: str) -> Any:
    if not isinstance(block, Mapping) or key not in block:
        raise ConfigError(f"{where}.{key}" if where else key,
                          "missing from the export document; export the sweep again with this telescope version")
    return block[key]


def optimizers_from_export(export: Mapping[str, Any] | str | os.PathLike, model: nn.Module,
                           rules: Rules = None) -> list[torch.optim.Optimizer]:
    """The optimizers a trial at the export's width builds, for `model` at that width (after
    `init_weights` at it): each group's peak lr and weight decay from the document's `at_width`
    block (keyed by role), the optimizer of each group from its `optimizer_of_group`, Muon's and
    AdamW's settings from its `optimizers` block. `export` is the document `telescope export`
    returns, or the path of a file it wrote (.json, .yaml or .toml)."""
    if isinstance(export, (str, os.PathLike)):
        from telescope.read.export import load_export  # the reader of export's own formats

        export = load_export(export)
    at = _entry(export, "at_width", "")
    lr = {g: float(_entry(_entry(at, "lr", "at_width"), g, "at_width.lr")) for g in GROUPS}
    wd = {g: float(_entry(_entry(at, "weight_decay", "at_width"), g, "at_width.weight_decay")) for g in GROUPS}
    kinds = _entry(at, "optimizer_of_group", "at_width")
    optimizer_of_group = {g: _entry(kinds, g, "at_width.optimizer_of_group") for g in GROUPS}
    for g, kind in optimizer_of_group.items():
        if kind not in ("muon", "adamw") or (kind == "muon" and g != "hidden"):
            raise ConfigError(f"at_width.optimizer_of_group.{g}",
                              f"Muon takes only the hidden matrices and AdamW the rest; got {kind!r}")
    settings = _entry(export, "optimizers", "")
    used = {kind: _entry(settings, kind, "optimizers") for kind in set(optimizer_of_group.values())}
    for kind, block in used.items():
        mode = block.get("weight_decay", WEIGHT_DECAY_MODE)
        if mode != WEIGHT_DECAY_MODE:
            raise ConfigError(f"optimizers.{kind}.weight_decay",
                              f"torch's Muon and AdamW decay {WEIGHT_DECAY_MODE} (W <- W * (1 - lr * wd)); got {mode!r}")
    muon_kwargs: dict[str, Any] = {}
    adamw_kwargs: dict[str, Any] = {}
    if "muon" in used:
        # JSON, YAML and TOML hand back lists where torch's optimizers keep tuples
        muon_kwargs = {k: _entry(used["muon"], k, "optimizers.muon") for k in MUON_SETTINGS}
        muon_kwargs["ns_coefficients"] = tuple(muon_kwargs["ns_coefficients"])
        muon_kwargs["ns_dtype"] = used["muon"].get("ns_dtype", "bf16")  # exports before it: bf16
    if "adamw" in used:
        adamw = used["adamw"]
        adamw_kwargs = {"betas": tuple(_entry(adamw, "betas", "optimizers.adamw")),
                        "eps": _entry(adamw, "eps", "optimizers.adamw"), "fused": adamw.get("fused", ADAMW_FUSED)}
    role_of = roles(model, rules)
    _check_readouts(model, role_of, float(_entry(at, "output_mult", "at_width")),
                    "call init_weights(model, width=..., base_width=...) with the export's widths first")
    return _build(model, role_of, lr, wd, optimizer_of_group, muon_kwargs, adamw_kwargs)


def coord_check(
    make_model: Callable[[int], nn.Module],
    widths: Sequence[int],
    *,
    base_width: int,
    lr: float,
    init_std: float,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    probe: torch.Tensor | None = None,
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    weight_decay: float = 0.0,
    optimizer: str = "muon",
    steps: int = 4,
    seeds: int = 1,
    parameterizations: Sequence[str] = ("mup", "sp"),
    hidden_lr_rules: Sequence[str] = ("spectral",),
    rules: Rules = None,
    layers: Mapping[str, Layer | Sequence[str]] | None = None,
) -> CoordCheck:
    """telescope's coordinate check (telescope.train.coordcheck) on your model: for every variant
    (muP under each hidden-lr rule, and sp) and width, `make_model(width)` is initialised with
    `init_weights` (seeds 0 .. seeds-1), trained `steps` optimizer steps with `optimizers` on
    `batches[t]` (the same batches at every width), and each layer type's activations on `probe`
    (default: the first batch's input) recorded after every step. `loss(model, x, y)` defaults to
    the cross-entropy of model(x)'s logits against y. `layers` maps a label to module names (or a
    coordcheck.Layer); by default, one label per kind of module that holds embedding, hidden or
    readout parameters (its name with the block numbers dropped). Plot with
    telescope.train.coordcheck.plot."""
    from telescope.train import coordcheck  # it builds on this module

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError("steps", f"must be a positive whole number; got {steps!r}")
    if len(batches) < steps:
        raise ConfigError("batches", f"need one (x, y) batch per step, {steps}; got {len(batches)}")
    loss = loss or (lambda model, x, y: F.cross_entropy(model(x).flatten(0, -2).float(), y.flatten()))
    widths = coordcheck.check_widths(widths, seeds)
    variants = coordcheck.variants(optimizer, parameterizations, hidden_lr_rules, "spectral")

    def run(variant: tuple[str, str], width: int, seed: int) -> dict:
        parameterization, rule = variant
        model = make_model(width)
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        init_weights(model, width=width, base_width=base_width, init_std=init_std,
                     parameterization=parameterization, rules=rules, generator=generator)
        opts = optimizers(model, width=width, base_width=base_width, lr=lr, weight_decay=weight_decay,
                          optimizer=optimizer, hidden_lr_rule=rule, parameterization=parameterization, rules=rules)
        device = next(model.parameters()).device

        def step(t: int, x: torch.Tensor, y: torch.Tensor) -> None:
            loss(model, x, y).backward()
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)

        where = {k: coordcheck.Layer.of(v) for k, v in layers.items()} if layers else _layers(model, rules)
        data = ((x.to(device), y.to(device)) for x, y in batches)
        x0 = (batches[0][0] if probe is None else probe).to(device)
        return coordcheck.trace(model, step, data, x0, steps, where)

    values = coordcheck.collect(
        {name: [[(variant, w, s) for s in range(seeds)] for w in widths] for name, variant in variants.items()},
        lambda job: run(*job))
    return coordcheck.CoordCheck(optimizer=optimizer, lr=lr, init_std=init_std, base_width=base_width,
                                 widths=widths, steps=steps, seeds=seeds, variants=list(variants), values=values)


def _layers(model: nn.Module, rules: Rules) -> dict[str, Layer]:
    """One label per kind of module holding embedding, hidden or readout parameters: the module's
    name without its block numbers ("blocks.3.attn.qkv" -> "blocks.attn.qkv")."""
    from telescope.train.coordcheck import Layer

    role_of = roles(model, rules)
    found: dict[str, list[str]] = {}
    for name, (module_name, _) in _owners(model).items():
        if module_name and role_of.get(name) in ("embedding", "hidden", "readout"):
            label = ".".join(part for part in module_name.split(".") if not part.isdigit())
            names = found.setdefault(label, [])
            if module_name not in names:
                names.append(module_name)
    return {label: Layer(tuple(names)) for label, names in found.items()}
