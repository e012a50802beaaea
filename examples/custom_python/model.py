"""A small modern decoder a user might write: RMSNorm, rotary position embeddings, SwiGLU MLP.

Nothing here knows about telescope except the readout, `MuReadout` from the muP library, which
multiplies the logits by 1/width_mult as muP wants. Every width dimension scales with `width`
(heads = width / head_dim, the MLP's hidden size = ffn_mult * width), which is what muP assumes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from telescope.train.muon_mup import MuReadout


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (seq_len, head_dim / 2) each."""
    freqs = base ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(seq_len).float(), freqs)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) pair of x (batch, heads, seq, head_dim) by its position's angle."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(width, width, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2) for proj in (self.q, self.k, self.v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # muP's 1/head_dim attention scale; head_dim is fixed across widths, so any constant
        # factor would do: this one equals the usual 1/sqrt(head_dim) at the base model
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.head_dim**0.5 / self.head_dim)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, width: int, ffn_mult: int):
        super().__init__()
        self.gate = nn.Linear(width, ffn_mult * width, bias=False)
        self.up = nn.Linear(width, ffn_mult * width, bias=False)
        self.down = nn.Linear(ffn_mult * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, width: int, head_dim: int, ffn_mult: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(width), Attention(width, head_dim)
        self.mlp_norm, self.mlp = RMSNorm(width), SwiGLU(width, ffn_mult)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    def __init__(self, *, vocab: int, width: int, depth: int, head_dim: int, ffn_mult: int, seq_len: int,
                 rope_base: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width, head_dim, ffn_mult) for _ in range(depth))
        self.norm = RMSNorm(width)
        self.readout = MuReadout(width, vocab, bias=False)
        cos, sin = rotary(seq_len, head_dim, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, self.cos[:t], self.sin[:t])
        return self.readout(self.norm(x))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
