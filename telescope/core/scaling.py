"""The muP rules as pure arithmetic: for a TrialConfig, the concrete init std, learning rate and
weight decay of every parameter group, the readout multiplier and the attention scale.

No torch here, so `export` can print the values at a target width without building a model;
telescope.train.model and telescope.train.optim read every number from `scaling_for`, and the tests check
that the built model and optimizers (and mup's own `infshape.width_mult()`) agree with it.

The rules (Tensor Programs V, Adam-style muP, "MuReadout" flavour), with m = width / base_width:

    group        params                     init std                       lr                  wd
    hidden       attn q,k,v,o; MLP in, out  init_std / sqrt(fan_in mult)   lr / m   (adam-mup)  wd * m
                                                                           lr / sqrt(m) (spec.) wd * sqrt(m)
    embedding    token + position tables    init_std                       lr                   0
    norm         norm gains                 1                              lr                   0
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
  every step and erase rare tokens. Norm gains are scales, not weights, and are never decayed.
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

from telescope.core.contract import TrialConfig

# Parameter groups, in the order the optimizer builds them. telescope.train.model tags every parameter
# with one of these; "hidden" is what Muon optimizes.
GROUPS = ("hidden", "embedding", "norm", "readout")


@dataclass(frozen=True)
class Scaling:
    """Concrete per-group values at one width. `lr[g]`, `weight_decay[g]` are keyed by GROUPS."""

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


def hidden_lr_mult(cfg: TrialConfig) -> float:
    """Factor applied to the base lr on hidden matrices."""
    if cfg.parameterization == "sp":
        return 1.0
    m = cfg.width_mult
    if cfg.optimizer == "muon" and cfg.hidden_lr_rule == "spectral":
        return 1.0 / math.sqrt(m)
    return 1.0 / m


def scaling_for(cfg: TrialConfig) -> Scaling:
    """The muP (or SP) values for `cfg`'s width; see the module docstring for the rules."""
    m = cfg.width_mult
    mup = cfg.parameterization == "mup"

    def hidden_init(fan_in: int, base_fan_in: int) -> float:
        # variance ~ 1/fan_in, pinned to init_std at the base width
        return cfg.init_std / math.sqrt(fan_in / base_fan_in) if mup else cfg.init_std

    d, d0, r = cfg.width, cfg.base_width, cfg.mlp_ratio
    lr = {
        "hidden": cfg.lr * hidden_lr_mult(cfg),
        "embedding": cfg.lr,
        "norm": cfg.lr,
        "readout": cfg.lr,
    }
    decayed = {"hidden": True, "embedding": False, "norm": False, "readout": True}
    # constant per-step shrink lr_g * wd_g == lr * wd (mup's MuAdamW rule)
    wd = {g: cfg.weight_decay * cfg.lr / lr[g] if decayed[g] else 0.0 for g in GROUPS}
    return Scaling(
        width=d,
        base_width=d0,
        width_mult=m if mup else 1.0,
        init_embedding=cfg.init_std,
        init_attn_qkv=hidden_init(d, d0),
        init_attn_out=hidden_init(d, d0),
        init_mlp_in=hidden_init(d, d0),
        init_mlp_out=hidden_init(r * d, r * d0),
        init_readout=cfg.init_std,
        lr=lr,
        weight_decay=wd,
        output_mult=1.0 / m if mup else 1.0,
        # muP's c/head_dim with c = sqrt(head_dim): numerically the standard 1/sqrt(head_dim)
        attn_scale=math.sqrt(cfg.head_dim) / cfg.head_dim if mup else 1.0 / math.sqrt(cfg.head_dim),
    )
