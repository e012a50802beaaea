"""Optimizers and the learning-rate schedule for one trial.

Muon (torch.optim.Muon with the paper's settings) takes the 2-D hidden matrices; AdamW takes the
embeddings, norm gains and readout. With optimizer "adamw", AdamW takes everything. Every group's
peak lr and weight decay come from telescope.scaling, so the muP rules live in one place.
Each param group keeps its peak lr under "peak_lr"; `set_lr` multiplies it by the schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from telescope.config import TrialConfig
from telescope.model import param_role
from telescope.scaling import GROUPS, scaling_for

ADAMW_BETAS = (0.95, 0.95)
ADAMW_EPS = 1e-8
MUON_KWARGS = dict(
    momentum=0.95,
    nesterov=True,
    ns_steps=5,
    ns_coefficients=(3.4445, -4.775, 2.0315),
    eps=1e-7,
    # update scaled by 0.2*sqrt(max(fan_in, fan_out)) to match AdamW's RMS (Moonlight's rule)
    adjust_lr_fn="match_rms_adamw",
)


def group_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by telescope.scaling group; each parameter in exactly one group."""
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        groups[param_role(name)[0]].append(p)
    return groups


def build_optimizers(model: nn.Module, cfg: TrialConfig) -> list[torch.optim.Optimizer]:
    """[Muon over hidden matrices, AdamW over the rest], or [AdamW over everything] for "adamw"."""
    scaling = scaling_for(cfg)
    params = group_parameters(model)

    def group(name: str) -> dict:
        lr = scaling.lr[name]
        # torch decays as W <- W * (1 - lr * wd) in both Muon and AdamW; scaling keeps lr*wd fixed
        return {"params": params[name], "lr": lr, "peak_lr": lr,
                "weight_decay": scaling.weight_decay[name], "group": name}

    adamw_groups = [group(g) for g in GROUPS if g != "hidden" or cfg.optimizer == "adamw"]
    adamw = torch.optim.AdamW(adamw_groups, betas=ADAMW_BETAS, eps=ADAMW_EPS)
    if cfg.optimizer == "adamw":
        return [adamw]
    return [torch.optim.Muon([group("hidden")], **MUON_KWARGS), adamw]


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
