"""Optimizers and the learning-rate schedule for one trial.

Muon (torch.optim.Muon's update with the paper's settings) takes the 2-D hidden matrices; AdamW
takes the embeddings, norm gains and readout. With optimizer "adamw", AdamW takes everything. Every group's
peak lr and weight decay come from telescope.core.scaling, so the muP rules live in one place.
Each param group keeps its peak lr under "peak_lr"; `set_lr` multiplies it by the schedule.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn as nn

from telescope.core.contract import TrialConfig
from telescope.train.model import param_role
from telescope.core.optimizers import ADAMW_BETAS, ADAMW_EPS, MUON_SETTINGS
from telescope.core.scaling import GROUPS, scaling_for

# Muon's settings as a plain dict of torch.optim.Muon keyword arguments
MUON_KWARGS = dict(MUON_SETTINGS)


class Muon(torch.optim.Muon):
    """torch.optim.Muon, with Newton-Schulz batched over stacks of same-shape matrices.

    Same hyperparameters, same update: Nesterov momentum, quintic Newton-Schulz in bf16 on the
    Frobenius-normalised momentum, lr scaled by adjust_lr_fn, coupled decay
    W <- W * (1 - lr*wd) - adjusted_lr * O. Only the kernel launches differ. torch runs the ~16
    small kernels of each Newton-Schulz once per matrix; a model's hidden matrices come in three
    shapes (d x d for q, k, v, o; 4d x d for the MLP's fc; d x 4d for its proj), so here each shape
    is one stack and each Newton-Schulz matmul one batched GEMM: fewer, larger kernels, which
    matters most at small widths (bench/engine.py measures it; the README has the numbers). On CPU
    the result is torch's bit for bit
    (tests/train/test_model.py checks it at widths 64 and 256, batched and single, tall and wide); a
    GPU's batched GEMM may round differently from one GEMM per matrix.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            # Not setdefault(key, zeros_like(p)): that would allocate a full-size zero tensor for
            # every matrix on every step only to throw it away.
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            ortho = orthogonalize(updates, group["ns_coefficients"], group["ns_steps"], group["eps"])
            torch._foreach_mul_(params, 1 - lr * wd)
            by_shape: dict[torch.Size, list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[p.shape].append(i)
            for shape, idx in by_shape.items():
                # torch's own lr adjustment (private, so it stays torch's definition)
                adjusted = torch.optim._muon._adjust_lr(lr, group["adjust_lr_fn"], shape)
                torch._foreach_add_([params[i] for i in idx], [ortho[i] for i in idx], alpha=-adjusted)
        return loss


def orthogonalize(
    updates: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int, eps: float
) -> list[torch.Tensor]:
    """Newton-Schulz of each 2-D update, batched: same-shape updates are stacked and every stack
    orthogonalized in one pass. A tall stack is worked on through its transpose, as torch does per
    matrix (so X X^T is the smaller Gram matrix); tall and wide updates of transposed shapes stay
    in separate stacks because a transposed view and a contiguous matrix take different GEMM
    kernels, whose bf16 rounding differs on some CPUs. Returned in bf16, each in its update's
    own orientation."""
    stacks: dict[torch.Size, list[int]] = defaultdict(list)
    for i, u in enumerate(updates):
        stacks[u.shape].append(i)
    out: list[torch.Tensor] = [None] * len(updates)  # type: ignore[list-item]
    for shape, idx in stacks.items():
        X = torch.empty((len(idx), *shape), dtype=torch.bfloat16, device=updates[idx[0]].device)
        for row, i in zip(X, idx):
            row.copy_(updates[i])  # cast and stack in one copy
        tall = shape[0] > shape[1]
        O = newton_schulz(X.mT if tall else X, coefficients, steps, eps)
        for i, o in zip(idx, (O.mT if tall else O).unbind(0)):
            out[i] = o
    return out


def newton_schulz(X: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """torch's quintic Newton-Schulz on a stack (n, rows, cols) of wide (rows <= cols) bf16 matrices,
    which it normalises in place."""
    a, b, c = coefficients
    X = X.div_(X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return X


def group_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by telescope.core.scaling group; each parameter in exactly one group."""
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
    # fused: one kernel over all tensors, on CPU as on CUDA; 5x faster than torch's default per-tensor
    # loop on CPU (bench/engine.py's widths), where the default is not even foreach
    adamw = torch.optim.AdamW(adamw_groups, betas=ADAMW_BETAS, eps=ADAMW_EPS, fused=True)
    if cfg.optimizer == "adamw":
        return [adamw]
    return [Muon([group("hidden")], **MUON_KWARGS), adamw]


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
