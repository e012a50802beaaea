"""Muon: torch.optim.Muon's update with the paper's settings, Newton-Schulz batched over stacks of
same-shape matrices.

`MUON_KWARGS` are torch.optim.Muon's keyword arguments for telescope.core.optimizers.MUON_SETTINGS,
the settings every trial uses; telescope.train.muon_mup builds its Muon from them.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist

from telescope.core.optimizers import MUON_SETTINGS

# Muon's settings as a plain dict of torch.optim.Muon keyword arguments
MUON_KWARGS = dict(MUON_SETTINGS)
NS_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # TrialConfig.ns_dtype, resolved


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

    `ns_dtype` ("bf16", torch's, or "fp32") is the Newton-Schulz arithmetic: a CPU without native
    bf16 matmuls runs bf16 GEMMs many times slower than fp32 ones (TrialConfig.ns_dtype chooses).

    `shard_newton_schulz`: with torch.distributed initialised over several ranks that all hold the
    same updates (gradients averaged before the step, as the trial engine does), each rank
    orthogonalizes its share of every stack and all-gathers the rest, instead of every rank
    repeating the whole Newton-Schulz (~width^3 per matrix per step, whatever the batch).
    """

    def __init__(self, params, *, ns_dtype: str = "bf16", shard_newton_schulz: bool = False, **kwargs):
        if ns_dtype not in NS_TORCH_DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(NS_TORCH_DTYPES)}; got {ns_dtype!r}")
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype
        self.shard_newton_schulz = shard_newton_schulz

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
            ortho = orthogonalize(updates, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                  NS_TORCH_DTYPES[self.ns_dtype], shared=self.shard_newton_schulz)
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
    updates: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int, eps: float,
    dtype: torch.dtype = torch.bfloat16, shared: bool = False,
) -> list[torch.Tensor]:
    """Newton-Schulz of each 2-D update, batched: same-shape updates are stacked and every stack
    orthogonalized in one pass. A tall stack is worked on through its transpose, as torch does per
    matrix (so X X^T is the smaller Gram matrix); tall and wide updates of transposed shapes stay
    in separate stacks because a transposed view and a contiguous matrix take different GEMM
    kernels, whose bf16 rounding differs on some CPUs. Returned in `dtype`, each in its update's
    own orientation.

    `shared` (with torch.distributed initialised, every rank holding the same `updates`): rank r
    orthogonalizes rows r*k .. r*k+k-1 of each stack, k = ceil(stack / ranks), the last rank's
    share padded with zero matrices (which stay zero), and the shares are all-gathered."""
    rank, ranks = (dist.get_rank(), dist.get_world_size()) if shared and dist.is_initialized() else (0, 1)
    stacks: dict[torch.Size, list[int]] = defaultdict(list)
    for i, u in enumerate(updates):
        stacks[u.shape].append(i)
    out: list[torch.Tensor] = [None] * len(updates)  # type: ignore[list-item]
    for shape, idx in stacks.items():
        share = -(-len(idx) // ranks)
        mine = idx[rank * share:(rank + 1) * share]
        make = torch.empty if len(mine) == share else torch.zeros
        X = make((share, *shape), dtype=dtype, device=updates[idx[0]].device)
        for row, i in zip(X, mine):
            row.copy_(updates[i])  # cast and stack in one copy
        tall = shape[0] > shape[1]
        O = newton_schulz(X.mT if tall else X, coefficients, steps, eps)
        O = O.mT if tall else O
        if ranks > 1:
            O = O.contiguous()
            shares = [torch.empty_like(O) for _ in range(ranks)]
            dist.all_gather(shares, O)
            O = torch.cat(shares)
        for i, o in zip(idx, O.unbind(0)):
            out[i] = o
    return out


def newton_schulz(X: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """torch's quintic Newton-Schulz on a stack (n, rows, cols) of wide (rows <= cols) matrices
    (bf16 in torch), which it normalises in place."""
    a, b, c = coefficients
    X = X.div_(X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return X
