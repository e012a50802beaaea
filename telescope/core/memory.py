"""How much device memory one worker of a built-in GPT trial needs, before it runs (pure arithmetic).

`estimate` adds up the tensors alive at the worst moment of a step, from the TrialConfig's shape,
the vocabulary, the micro-batch and the number of workers; `fitting_micro_batch` picks the largest
micro-batch that fits a device. `telescope plan` shows both per level. Sizes are bytes.

The terms (d = width, r = mlp_ratio, h = heads, L = depth, V = vocabulary, T = seq_len, n = tokens
in one micro-batch = micro_batch x T, a = bytes of an activation: 2 under the bf16 autocast on
cuda, 4 in fp32 on cpu). Counted per worker: every worker holds the whole model (data-parallel).

- weights, grads: fp32, 4 bytes per parameter each. Parameters: the hidden matrices L (4 + 2r) d^2
  (q, k, v, o and the MLP's two), embeddings (V + T) d, norm gains (2L + 1) d, the readout V d.
  With several micro-batches the gradients stay allocated from the first one's backward to the
  optimizer step (they accumulate), so they count at the activations' peak too; with one pass
  they are allocated while backward frees the activations, and count at the optimizer step only.
- optimizer state: fp32. Muon keeps one momentum per hidden matrix (4 bytes per hidden parameter);
  AdamW two moments for everything else (8 bytes per parameter); with optimizer "adamw", AdamW's
  two moments for every parameter.
- weight copies: what the forward keeps of the weights for backward beyond the weights
  themselves. On cuda, autocast's bf16 copy of every matmul weight (2 bytes per hidden and readout
  parameter; q, k, v are concatenated before the cast, so they are copied once). On cpu, the fp32
  concatenation of q, k, v (3 d^2 per layer), and the readout weight times its muP multiplier
  when the multiplier is applied to the weight (it is applied to the smaller of W and h).
- activations, per micro-batch: what backward needs of each layer, per token: the two LayerNorms'
  inputs (the fp32 residual stream, 2 x 4d) with their fp32 mean and 1/std (16), the inputs of the
  qkv, fc and proj matmuls (a(d + d + rd)), q, k and v (3ad) and the attention output (ad) kept by
  the fused attention kernel with its fp32 log-sum-exp (4h), and the GELU's input (ard):
  8d + 16 + a(6d + 2rd) + 4h per token per layer. The attention output is also the o matmul's
  input (the fused kernels write it heads-inner, so the reshape before o is a view), and the
  fused (flash or memory-efficient) attention keeps no T x T scores: nothing grows with T^2. The
  head adds the final norm's input with its statistics (4d + 8), the readout's input (ad) and the
  token ids and targets (16). With activation checkpointing a layer keeps only its input (4d per
  token, the residual stream), and backward recomputes one layer at a time, so one layer's full
  activations come back on top.
- logits, per micro-batch: the loss's tensors at their peak. The forward holds the logits (aV),
  their fp32 copy (4V; GPT.forward casts them for the loss; on cpu they already are fp32) and the
  log-softmax output the loss keeps for backward (4V), per token; backward then holds that output,
  the gradient coming into it and the one going out, all fp32 (12V). The larger of the two counts.
  At the paper's shapes this is the largest term: micro-batching is what makes it fit.
- the optimizer step, after backward has freed the activations and logits, with every gradient
  allocated: Muon's Nesterov update is a new fp32 tensor per hidden matrix (4 bytes per hidden
  parameter), Newton-Schulz keeps every orthogonalized update in its dtype until all are applied
  (2 or 4 bytes per hidden parameter), and the stack being orthogonalized has three more copies
  alive (its input, the iterate and the next one; its Gram matrices are no larger than one of
  them), counted for the largest stack, the L max(4, r) d^2 of one shape. With several workers
  the gradient all-reduce's flat bucket comes first, never together with these.

Not counted: the CUDA context, the allocator's fragmentation and kernels' workspaces (the
headroom of `fitting_micro_batch` stands for them), and torch.compile's savings (it fuses
elementwise ops and keeps fewer of their inputs: the estimate is the eager engine's, an upper one).
"""

from __future__ import annotations

from dataclasses import dataclass

from telescope.core.contract import TrialConfig, divisors

FP32 = 4
ACTIVATION_BYTES = {"cuda": 2, "cpu": 4}  # bf16 autocast on GPUs, fp32 on CPUs (telescope.train.trial)
NS_BYTES = {"bf16": 2, "fp32": 4}
GB = 1e9  # plan's and the CLI's unit
DEFAULT_GPU_MEMORY_GB = 80.0  # what `telescope plan` holds the estimates to unless told (an H100's or A100's)
# The engine (telescope.train.trial) all-reduces gradients in flat buckets of at most this many
# fp32 values; here so that the estimate and the engine share one number.
GRAD_BUCKET_ELEMENTS = 2**25
# Share of a device's memory left for what the estimate does not count (see the module docstring).
HEADROOM = 0.1


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per worker of one trial, term by term (see the module docstring)."""

    micro_batch: int
    weights: float
    grads: float
    optimizer_state: float
    weight_copies: float
    activations: float
    logits: float
    optimizer_step: float
    accumulates: bool  # more than one micro-batch per step: gradients live through every backward

    @property
    def total(self) -> float:
        """The step's peak: the persistent tensors plus the larger of backward's and the optimizer
        step's transient ones (with the gradients in whichever holds them)."""
        backward = self.weight_copies + self.activations + self.logits + (self.grads if self.accumulates else 0)
        return self.weights + self.optimizer_state + max(backward, self.grads + self.optimizer_step)


def param_counts(width: int, depth: int, seq_len: int, vocab_size: int, mlp_ratio: int = 4) -> dict[str, int]:
    """The built-in GPT's parameters by muP role (telescope.core.scaling.GROUPS)."""
    return {
        "hidden": depth * (4 + 2 * mlp_ratio) * width * width,
        "embedding": (vocab_size + seq_len) * width,
        "norm": (2 * depth + 1) * width,
        "readout": vocab_size * width,
    }


def _device_kind(cfg: TrialConfig, device: str | None) -> str:
    kind = device or ("cpu" if cfg.device == "cpu" else "cuda")
    if kind not in ACTIVATION_BYTES:
        raise ValueError(f"device must be one of {', '.join(ACTIVATION_BYTES)}; got {kind!r}")
    return kind


def estimate(cfg: TrialConfig, vocab_size: int, *, micro_batch: int | None = None, workers: int = 1,
             device: str | None = None) -> MemoryEstimate:
    """Bytes one of `workers` workers needs to train `cfg` on a `device` ("cuda" or "cpu"; by
    default cfg's, "auto" counting as cuda) with `micro_batch` rows per pass (by default cfg's
    micro_batch_size, or the worker's whole batch where it is unset or "auto")."""
    kind = _device_kind(cfg, device)
    per_worker, configured = cfg.micro_batches(workers)
    micro = micro_batch or configured or per_worker
    d, r, h, L, V, T = cfg.width, cfg.mlp_ratio, cfg.n_heads, cfg.depth, vocab_size, cfg.seq_len
    a = ACTIVATION_BYTES[kind]
    counts = param_counts(d, L, T, V, r)
    total_params = sum(counts.values())
    hidden = counts["hidden"]
    tokens = micro * T

    if cfg.optimizer == "muon":
        state = FP32 * hidden + 2 * FP32 * (total_params - hidden)
    else:
        state = 2 * FP32 * total_params
    if kind == "cuda":
        weight_copies = a * (hidden + counts["readout"])
    else:
        scales_weight = cfg.width != cfg.base_width and V * d < tokens * d  # MuReadout's choice
        weight_copies = FP32 * 3 * d * d * L + (FP32 * V * d if scales_weight else 0)

    per_layer = 8 * d + 16 + a * (6 * d + 2 * r * d) + 4 * h  # per token
    head = 4 * d + 8 + a * d + 16
    if cfg.activation_checkpointing:
        activations = tokens * (L * 4 * d + per_layer + head)
    else:
        activations = tokens * (L * per_layer + head)
    logits = tokens * V * max(a + FP32 + FP32 if kind == "cuda" else 2 * FP32, 3 * FP32)

    step = 0.0
    if cfg.optimizer == "muon":
        ns = NS_BYTES[cfg.replace(device=kind).resolved_ns_dtype]
        step = FP32 * hidden + ns * hidden + 3 * ns * L * max(4, r) * d * d
    if workers > 1:
        step = max(step, FP32 * min(GRAD_BUCKET_ELEMENTS, total_params))
    return MemoryEstimate(micro_batch=micro, weights=FP32 * total_params, grads=FP32 * total_params,
                          optimizer_state=state, weight_copies=weight_copies, activations=activations,
                          logits=logits, optimizer_step=step, accumulates=micro < per_worker)


def fitting_micro_batch(cfg: TrialConfig, vocab_size: int, device_memory: float, *, workers: int = 1,
                        headroom: float = HEADROOM, device: str | None = None) -> int | None:
    """The largest micro-batch (a divisor of the worker's batch) whose estimate fits
    `device_memory` bytes less a `headroom` share; None when even one row per pass does not."""
    per_worker, _ = cfg.micro_batches(workers)
    budget = device_memory * (1 - headroom)
    fits = [m for m in divisors(per_worker)
            if estimate(cfg, vocab_size, micro_batch=m, workers=workers, device=device).total <= budget]
    return max(fits, default=None)
