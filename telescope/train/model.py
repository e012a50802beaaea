"""A GPT-style decoder with muP width bookkeeping, in the spirit of nanoGPT's model.py.

Pre-norm blocks of causal self-attention and a GELU MLP, learned token and position embeddings,
a final norm and a MuReadout head. Depth and head_dim are fixed; heads = width / head_dim, so a
sweep changes only the width. The model is one user of telescope.train.muon_mup, as a user's own
model would be: its parameters' roles, its init and its readout multiplier come from there, and
every number that depends on width (init stds, the readout multiplier, the attention scale) from
telescope.core.scaling. The tests check them against mup's own `infshape` bookkeeping.

Choices, and why:
- Learned absolute position embeddings (nanoGPT), not RoPE: on a 2-core CPU every elementwise op
  shows up in step time, a position table is one add, and to muP it is just another embedding
  (one width dimension, constant init and lr). Depth, seq_len and head_dim never change across
  widths, so the position scheme does not interact with the transfer being studied.
- q, k, v, o are separate matrices because Muon orthogonalizes each on its own (the paper's
  treatment, and what telescope.core.flops.muon_step_flops counts). Forward concatenates q, k, v into
  one (3d x d) weight for a single matmul: fewer, larger GEMMs are faster on CPU and the copy is
  tiny next to the matmul.
- LayerNorm with a gain and no bias, no biases in linears: fewer parameters whose muP treatment
  needs a decision, and torch's CPU layer_norm kernel is fused (rms_norm is not, measured slower).
- No GPT-2 style 1/sqrt(2*depth) on residual projections: depth is fixed, so it would only move
  the constant that the init_std sweep already covers.
- cfg.activation_checkpointing keeps only each block's input for backward and recomputes the
  block there (torch.utils.checkpoint, non-reentrant): memory for activations drops from every
  layer's to one layer's plus the residual stream, for about one more forward pass of compute.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from telescope.core.contract import TrialConfig
from telescope.core.scaling import Scaling, scaling_for
from telescope.train.muon_mup import MuReadout, init_weights, roles


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, head_dim: int, attn_scale: float):
        super().__init__()
        self.n_heads, self.head_dim, self.attn_scale = width // head_dim, head_dim, attn_scale
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = F.linear(x, torch.cat((self.q.weight, self.k.weight, self.v.weight)))
        # (B, T, 3, h, hd) -> (B, h, 3, T, hd): SDPA takes the strided views without a copy
        q, k, v = qkv.view(B, T, 3, self.n_heads, self.head_dim).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.attn_scale)
        return self.o(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, width: int, mlp_ratio: int):
        super().__init__()
        self.fc = nn.Linear(width, mlp_ratio * width, bias=False)
        self.proj = nn.Linear(mlp_ratio * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: TrialConfig, attn_scale: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, bias=False)
        self.attn = CausalSelfAttention(cfg.width, cfg.head_dim, attn_scale)
        self.ln_2 = nn.LayerNorm(cfg.width, bias=False)
        self.mlp = MLP(cfg.width, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: TrialConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.scaling: Scaling = scaling_for(cfg)
        self.wte = nn.Embedding(vocab_size, cfg.width)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg, self.scaling.attn_scale) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.width, bias=False)
        self.lm_head = MuReadout(cfg.width, vocab_size, bias=False, output_mult=self.scaling.output_mult)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab), or the mean cross-entropy when targets are given."""
        T = idx.shape[1]
        # the whole table when T == seq_len (training), so backward skips a slice's zero-fill
        pos = self.wpe.weight if T == self.wpe.num_embeddings else self.wpe.weight[:T]
        x = self.wte(idx) + pos
        recompute = self.cfg.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1))

    def n_matmul_params(self) -> int:
        """Parameters that take part in matmuls (all but embeddings and norms), as in telescope.core.flops."""
        role_of = roles(self)
        return sum(p.numel() for n, p in self.named_parameters() if role_of[n] in ("hidden", "readout"))


def build_model(cfg: TrialConfig, vocab_size: int, device: str | torch.device = "cpu") -> GPT:
    """The model for `cfg`, with muP (or SP) init applied by telescope.train.muon_mup.init_weights.

    The model is created on the meta device and materialized once on `device` before the init,
    skipping torch's default init entirely. Weights are drawn, in named_parameters() order, from a
    generator seeded with cfg.seed: same seed, same model.
    """
    with torch.device("meta"):
        model = GPT(cfg, vocab_size)
    model.to_empty(device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    init_weights(model, width=cfg.width, base_width=cfg.base_width, init_std=cfg.init_std,
                 parameterization=cfg.parameterization, generator=generator)
    return model
