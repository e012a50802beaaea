"""FLOP accounting, pure arithmetic shared by the trial engine, `plan`, reports and benchmarks.

Model FLOPs follow nanoGPT/PaLM: 6 FLOPs per parameter per token for the forward and backward
matmuls (embedding lookups excluded, readout included) plus 12 * depth * width * seq_len for the
attention score and value products.

Optimizer FLOPs are Muon's Newton-Schulz iterations, paid once per optimizer step whatever the
batch: ~width^3 per hidden matrix per step, against the model's ~width^2 per token. They matter
at large widths and small batches, and vanish at large batches. AdamW's elementwise update is
not counted: about ten FLOPs per parameter per step, against the model's 6 per parameter per token.
"""

from __future__ import annotations

from telescope.core.optimizers import MUON_SETTINGS

NS_STEPS = MUON_SETTINGS["ns_steps"]


def matmul_params(width: int, depth: int, vocab_size: int, mlp_ratio: int = 4) -> int:
    """Parameters that take part in matmuls: q,k,v,o (4 d^2) + MLP (2 r d^2) per block, + readout."""
    return depth * (4 + 2 * mlp_ratio) * width * width + vocab_size * width


def flops_per_token(width: int, depth: int, seq_len: int, vocab_size: int, mlp_ratio: int = 4) -> float:
    return 6.0 * matmul_params(width, depth, vocab_size, mlp_ratio) + 12.0 * depth * width * seq_len


def training_flops(
    width: int, depth: int, seq_len: int, vocab_size: int, batch_size: int, steps: int, mlp_ratio: int = 4
) -> float:
    return flops_per_token(width, depth, seq_len, vocab_size, mlp_ratio) * batch_size * seq_len * steps


def newton_schulz_flops(rows: int, cols: int, ns_steps: int = NS_STEPS) -> float:
    """FLOPs of Muon's quintic Newton-Schulz on one rows x cols matrix (works on the short side m).

    Per iteration: A = X X^T (2 m^2 n), B = b A + c A^2 (2 m^3), X' = a X + B X (2 m^2 n).
    """
    m, n = min(rows, cols), max(rows, cols)
    return ns_steps * (4.0 * m * m * n + 2.0 * m**3)


def muon_step_flops(width: int, depth: int, mlp_ratio: int = 4, ns_steps: int = NS_STEPS) -> float:
    """Newton-Schulz FLOPs of one optimizer step over all hidden matrices of the model."""
    per_block = 4 * newton_schulz_flops(width, width, ns_steps) + 2 * newton_schulz_flops(
        width, mlp_ratio * width, ns_steps
    )
    return depth * per_block


def optimizer_flops(optimizer: str, width: int, depth: int, steps: int, mlp_ratio: int = 4) -> float:
    """Newton-Schulz FLOPs of `steps` optimizer steps: Muon's over every hidden matrix, 0 for AdamW."""
    return steps * muon_step_flops(width, depth, mlp_ratio) if optimizer == "muon" else 0.0
