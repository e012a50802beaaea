"""Optimizers and the learning-rate schedule for one trial.

`build_optimizers` is telescope.train.muon_mup.optimizers for a TrialConfig: Muon (torch.optim.Muon's
update with the paper's settings, telescope.train.muon) takes the 2-D hidden matrices; AdamW takes
the embeddings, norm gains and readout. With optimizer "adamw", AdamW takes everything. Every
group's peak lr and weight decay come from telescope.core.scaling, so the muP rules live in one
place. Each param group keeps its peak lr under "peak_lr"; `set_lr` multiplies it by the schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from telescope.core.contract import TrialConfig
from telescope.train import muon_mup
from telescope.train.muon import MUON_KWARGS, Muon, newton_schulz, orthogonalize
from telescope.train.muon_mup import group_parameters

__all__ = ["MUON_KWARGS", "Muon", "build_optimizers", "group_parameters", "lr_factor", "newton_schulz",
           "orthogonalize", "set_lr"]


def build_optimizers(model: nn.Module, cfg: TrialConfig, workers: int = 1) -> list[torch.optim.Optimizer]:
    """[Muon over hidden matrices, AdamW over the rest], or [AdamW over everything] for "adamw".
    With `workers` > 1 ranks (torch.distributed), Muon's Newton-Schulz is shared among them."""
    return muon_mup.optimizers(model, width=cfg.width, base_width=cfg.base_width, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
                               hidden_lr_rule=cfg.hidden_lr_rule, parameterization=cfg.parameterization,
                               ns_dtype=_ns_dtype(cfg), shard_newton_schulz=workers > 1)


def _ns_dtype(cfg: TrialConfig) -> str:
    """The config's Newton-Schulz dtype; with device "auto" still unresolved, the one it resolves to here."""
    if cfg.resolved_ns_dtype != "auto":
        return cfg.resolved_ns_dtype
    return cfg.replace(device="cuda" if torch.cuda.is_available() else "cpu").resolved_ns_dtype


def lr_factor(step: int, cfg: TrialConfig) -> float:
    """Schedule multiplier for 0-based `step` of cfg.steps: linear warmup over cfg.warmup_steps
    from 1/(W+1) up to 1 at step W, then cosine decay to cfg.final_lr_frac at the last step."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, cfg.steps - 1 - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.final_lr_frac + (1.0 - cfg.final_lr_frac) * cosine


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * factor
