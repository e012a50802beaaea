"""The muP rules as pure arithmetic: the concrete init std, learning rate and weight decay of every
parameter group, the readout multiplier and (for the built-in GPT) the attention scale.

No torch here, so `export` can print the values at a target width without building a model.
`group_values` evaluates the rules for any model from its width multiplier and base
hyperparameters; telescope.train.muon_mup (the muP-for-Muon library that the built-in GPT and a
user's own model both go through) reads every number from it. `scaling_for` adds the built-in GPT's
per-layer init stds and attention scale for a TrialConfig. The tests check the built models and
optimizers, and mup's own `infshape.width_mult()`, against both.

The rules (Tensor Programs V, Adam-style muP, "MuReadout" flavour), with m = width / base_width:

    group        params                     init std                       lr                  wd
    hidden       attn q,k,v,o; MLP in, out  init_std / sqrt(fan_in mult)   lr / m   (adam-mup)  wd * m
                                                                           lr / sqrt(m) (spec.) wd * sqrt(m)
    embedding    token + position tables    init_std                       lr                   0
    norm         norm gains, biases         1 (biases 0)                   lr                   0
    readout      output head (MuReadout)    init_std                       lr                   wd
    readout output multiplier 1/m; attention scale 1/sqrt(head_dim) (see `attn_scale`).

Why each choice:
- Hidden lr. The paper's claim is that AdamW's muP rule (lr ~ 1/m) carries over to Muon once the
  orthogonalized update is scaled by 0.2*sqrt(max(fan_in, fan_out)) to match AdamW's RMS
  ("adam-mup"). The spectral view says that update moves a square layer's output by
  ~ lr*sqrt(width), so a width-independent output change wants lr ~ 1/sqrt(m) ("spectral"). Both
  are offered so the coordinate check and the transfer benchmark can decide. AdamW always uses 1/m.
- Weight decay. Every decayed group keeps lr_group * wd_group == lr * wd, so each step shrinks the
  weights by the same factor (1 - lr*wd) at every width: the decay's time constant in steps does not
  drift with width. This is exactly what mup's MuAdamW does (lr / m, wd * m on matrix-like
  weights); torch's Muon and AdamW both decay as W <- W * (1 - lr_group * wd_group).
  Embeddings are not decayed: a row only gets gradient when its token occurs, but decay would act
  every step and erase rare tokens. Norm gains are scales, not weights, and are never decayed;
  biases (vector-like, like gains) share their group and start at 0.
- Hidden init. Variance ~ 1/fan_in, pinned to init_std at the base width. For a model whose width
  dimensions all scale together (d, heads x head_dim, mlp_ratio x d) every hidden matrix's fan-in
  multiplier is m itself, which is what `group_values` assumes.
- Readout. mup's MuReadout multiplies its input by 1/m, and its weight is "vector-like" to mup
  (one width dimension), so MuAdam leaves its lr and wd unscaled: readout lr = lr. Its init std
  is init_std at every width (MuReadout's constant-variance flavour; with the 1/m multiplier the
  initial logits shrink ~ 1/sqrt(m), as muP allows). Not zero-init, TP V's other option: measured
  at width 64 (base 32, 200 steps), a zero head left AdamW on the unigram plateau (val 2.99 vs
  2.56 nats) and cost Muon too (2.15 vs 2.10). A zero head passes no gradient to the hidden layers
  on the first step and only head-sized noise after, which Adam's normalisation turns into
  full-size random steps.
- Attention scale. muP wants 1/head_dim (q.k grows ~ head_dim once q and k correlate). head_dim is
  held fixed across widths, so any constant works; we use sqrt(head_dim)/head_dim, i.e. c/head_dim
  with c = sqrt(head_dim), which equals the standard 1/sqrt(head_dim) at our head_dim and so keeps
  the base model identical to a standard transformer.
- Standard parameterization ("sp", GPT-2 style, the coordinate check's foil): no width scaling
  anywhere: every init = init_std, every lr = lr, wd on hidden and readout, readout multiplier 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from telescope.core.contract import HIDDEN_LR_RULES, OPTIMIZERS, PARAMETERIZATIONS, TrialConfig
from telescope.errors import ConfigError

# Parameter groups (a parameter's muP role), in the order the optimizer builds them; "hidden" is
# what Muon optimizes. telescope.train.muon_mup.roles tags every parameter with one of these.
GROUPS = ("hidden", "embedding", "norm", "readout")
DECAYED = {"hidden": True, "embedding": False, "norm": False, "readout": True}
DRAWN = ("hidden", "embedding", "readout")  # groups initialised from a normal; norm gains start at 1


@dataclass(frozen=True)
class GroupValues:
    """muP's per-group values at one width, for any model whose width dimensions all scale by
    width_mult. `lr`, `weight_decay` are keyed by GROUPS, `init_std` by DRAWN (norm gains start at
    1 and biases at 0, not drawn)."""

    width_mult: float  # 1 under sp: nothing scales
    lr: dict[str, float]  # peak lr; the schedule multiplies it
    weight_decay: dict[str, float]  # coupled: each step W <- W * (1 - lr_group * wd_group)
    init_std: dict[str, float]
    output_mult: float  # readout logits = output_mult * (W h)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hidden_lr_factor(width_mult: float, optimizer: str, hidden_lr_rule: str, parameterization: str) -> float:
    """Factor applied to the base lr on hidden matrices."""
    if parameterization == "sp":
        return 1.0
    if optimizer == "muon" and hidden_lr_rule == "spectral":
        return 1.0 / math.sqrt(width_mult)
    return 1.0 / width_mult


def _check(width_mult: float, parameterization: str, optimizer: str = "muon", hidden_lr_rule: str = "spectral") -> None:
    for field, value, allowed in (("optimizer", optimizer, OPTIMIZERS), ("hidden_lr_rule", hidden_lr_rule, HIDDEN_LR_RULES),
                                  ("parameterization", parameterization, PARAMETERIZATIONS)):
        if value not in allowed:
            raise ConfigError(field, f"must be one of {', '.join(allowed)}; got {value!r}")
    if isinstance(width_mult, bool) or not (isinstance(width_mult, (int, float)) and 0 < width_mult < math.inf):
        raise ConfigError("width", f"width / base_width must be a positive number; got {width_mult!r}")


def lr_and_weight_decay(
    width_mult: float, lr: float, weight_decay: float, *, optimizer: str = "muon", hidden_lr_rule: str = "spectral",
    parameterization: str = "mup",
) -> tuple[dict[str, float], dict[str, float]]:
    """Peak lr and weight decay per group (keyed by GROUPS) at width_mult = width / base_width."""
    _check(width_mult, parameterization, optimizer, hidden_lr_rule)
    lrs = {
        "hidden": lr * hidden_lr_factor(width_mult, optimizer, hidden_lr_rule, parameterization),
        "embedding": lr,
        "norm": lr,
        "readout": lr,
    }
    # constant per-step shrink lr_g * wd_g == lr * wd (mup's MuAdamW rule)
    return lrs, {g: weight_decay * lr / lrs[g] if DECAYED[g] else 0.0 for g in GROUPS}


def init_stds(width_mult: float, init_std: float, parameterization: str = "mup") -> dict[str, float]:
    """Init std per drawn group (keyed by DRAWN): a hidden matrix's variance ~ 1/fan_in, pinned to
    init_std at the base width; embeddings and the readout at init_std."""
    _check(width_mult, parameterization)
    hidden = init_std / math.sqrt(width_mult) if parameterization == "mup" else init_std
    return {"hidden": hidden, "embedding": init_std, "readout": init_std}


def output_mult(width_mult: float, parameterization: str = "mup") -> float:
    """The readout's output multiplier: 1/width_mult under muP (mup's MuReadout), 1 under sp."""
    _check(width_mult, parameterization)
    return 1.0 / width_mult if parameterization == "mup" else 1.0


def group_values(
    width_mult: float,
    lr: float,
    weight_decay: float,
    init_std: float,
    *,
    optimizer: str = "muon",
    hidden_lr_rule: str = "spectral",
    parameterization: str = "mup",
) -> GroupValues:
    """Every per-group number at width_mult = width / base_width, from the base lr, weight decay and
    init std; see the module docstring for the rules."""
    lrs, wds = lr_and_weight_decay(width_mult, lr, weight_decay, optimizer=optimizer,
                                   hidden_lr_rule=hidden_lr_rule, parameterization=parameterization)
    return GroupValues(
        width_mult=width_mult if parameterization == "mup" else 1.0,
        lr=lrs,
        weight_decay=wds,
        init_std=init_stds(width_mult, init_std, parameterization),
        output_mult=output_mult(width_mult, parameterization),
    )


@dataclass(frozen=True)
class Scaling:
    """The built-in GPT's values at one width: `group_values` plus its per-layer init stds and
    attention scale. `lr[g]`, `weight_decay[g]` are keyed by GROUPS."""

    width: int
    base_width: int
    width_mult: float
    # init std per layer type (norm gains start at 1, not drawn)
    init_embedding: float
    init_attn_qkv: float
    init_attn_out: float
    init_mlp_in: float
    init_mlp_out: float
    init_readout: float
    # optimizer hyperparameters per group: peak lr (the schedule multiplies it) and weight decay
    lr: dict[str, float]
    weight_decay: dict[str, float]
    # forward-pass multipliers
    output_mult: float  # readout logits = output_mult * (W h)
    attn_scale: float  # softmax(attn_scale * q.k)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scaling_for(cfg: TrialConfig) -> Scaling:
    """The muP (or SP) values for `cfg`'s width; see the module docstring for the rules."""
    v = group_values(cfg.width_mult, cfg.lr, cfg.weight_decay, cfg.init_std, optimizer=cfg.optimizer,
                     hidden_lr_rule=cfg.hidden_lr_rule, parameterization=cfg.parameterization)
    # every hidden fan-in grows by m: d / d0 for attention and the MLP's input, r*d / (r*d0) for
    # its output, the same rational and so the same float
    hidden = v.init_std["hidden"]
    return Scaling(
        width=cfg.width,
        base_width=cfg.base_width,
        width_mult=v.width_mult,
        init_embedding=v.init_std["embedding"],
        init_attn_qkv=hidden,
        init_attn_out=hidden,
        init_mlp_in=hidden,
        init_mlp_out=hidden,
        init_readout=v.init_std["readout"],
        lr=v.lr,
        weight_decay=v.weight_decay,
        output_mult=v.output_mult,
        # muP's c/head_dim with c = sqrt(head_dim): numerically the standard 1/sqrt(head_dim)
        attn_scale=math.sqrt(cfg.head_dim) / cfg.head_dim if cfg.parameterization == "mup"
        else 1.0 / math.sqrt(cfg.head_dim),
    )
