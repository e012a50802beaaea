"""A GPT-style decoder with muP width bookkeeping, in the spirit of nanoGPT's model.py.

Pre-norm blocks of causal self-attention and a GELU MLP, learned token and position embeddings,
a final norm and a MuReadout head. Depth and head_dim are fixed; heads = width / head_dim, so a
sweep changes only the width. Every number that depends on width (init stds, the readout
multiplier, the attention scale) comes from telescope.core.scaling, and `mup.set_base_shapes` attaches
mup's `infshape` to every parameter so mup's view of the model can be checked against ours.

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
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mup import MuReadout, set_base_shapes

from telescope.core.contract import TrialConfig
from telescope.core.scaling import Scaling, scaling_for

# parameter name suffix -> (optimizer group in telescope.core.scaling.GROUPS, Scaling field of its init
# std, None for norm gains which start at 1). The one routing table: init and optimizers read it.
PARAM_ROLES: dict[str, tuple[str, str | None]] = {
    "wte.weight": ("embedding", "init_embedding"),
    "wpe.weight": ("embedding", "init_embedding"),
    "attn.q.weight": ("hidden", "init_attn_qkv"),
    "attn.k.weight": ("hidden", "init_attn_qkv"),
    "attn.v.weight": ("hidden", "init_attn_qkv"),
    "attn.o.weight": ("hidden", "init_attn_out"),
    "mlp.fc.weight": ("hidden", "init_mlp_in"),
    "mlp.proj.weight": ("hidden", "init_mlp_out"),
    "ln_1.weight": ("norm", None),
    "ln_2.weight": ("norm", None),
    "ln_f.weight": ("norm", None),
    "lm_head.weight": ("readout", "init_readout"),
}


def param_role(name: str) -> tuple[str, str | None]:
    """(group, init field) of a parameter by its name in GPT.named_parameters()."""
    for suffix, role in PARAM_ROLES.items():
        if name == suffix or name.endswith("." + suffix):
            return role
    raise KeyError(f"parameter {name!r} has no muP role; add it to telescope.train.model.PARAM_ROLES")


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


class Readout(MuReadout):
    """mup's MuReadout: logits = (output_mult / width_mult) * W h + b, width_mult from mup's
    set_base_shapes. The factor multiplies whichever of W and h is smaller (the product is the
    same), one small op instead of MuReadout's two over the activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mult = self.output_mult / self.width_mult()
        if mult == 1.0:
            return F.linear(x, self.weight, self.bias)
        if self.weight.numel() < x.numel():
            return F.linear(x, self.weight * mult, self.bias)
        return F.linear(x * mult, self.weight, self.bias)


class GPT(nn.Module):
    def __init__(self, cfg: TrialConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.scaling: Scaling = scaling_for(cfg)
        self.wte = nn.Embedding(vocab_size, cfg.width)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg, self.scaling.attn_scale) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.width, bias=False)
        # the 1/m lives in mup's infshape bookkeeping; output_mult stays 1
        self.lm_head = Readout(cfg.width, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab), or the mean cross-entropy when targets are given."""
        T = idx.shape[1]
        # the whole table when T == seq_len (training), so backward skips a slice's zero-fill
        pos = self.wpe.weight if T == self.wpe.num_embeddings else self.wpe.weight[:T]
        x = self.wte(idx) + pos
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1))

    def n_matmul_params(self) -> int:
        """Parameters that take part in matmuls (all but embeddings and norms), as in telescope.core.flops."""
        return sum(p.numel() for n, p in self.named_parameters() if param_role(n)[0] in ("hidden", "readout"))


@torch.no_grad()
def init_weights(model: GPT, generator: torch.Generator | None = None) -> None:
    """Draw every parameter from its telescope.core.scaling init std (norm gains start at 1)."""
    for name, p in model.named_parameters():
        _, init_field = param_role(name)
        if init_field is None:
            p.fill_(1.0)
        else:
            std = getattr(model.scaling, init_field)
            if std == 0.0:
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)


def build_model(cfg: TrialConfig, vocab_size: int, device: str | torch.device = "cpu") -> GPT:
    """The model for `cfg`, with mup base shapes set and muP (or SP) init applied.

    muP: base (width=base_width) and delta (width=2*base_width) models are built on the meta
    device, where they cost no memory or time; mup only reads their shapes. SP: base=None, mup's
    own SP mode, so every width_mult is 1. The model itself is also created on meta and
    materialized once on `device` before our init, skipping torch's default init entirely.
    Weights are drawn from a generator seeded with cfg.seed: same seed, same model.
    """
    with torch.device("meta"):
        model = GPT(cfg, vocab_size)
        if cfg.parameterization == "mup":
            base = GPT(cfg.replace(width=cfg.base_width), vocab_size)
            delta = GPT(cfg.replace(width=2 * cfg.base_width), vocab_size)
        else:
            base = delta = None
    set_base_shapes(model, base, delta=delta, rescale_params=False)  # init is ours, below
    # to_empty keeps the Parameter objects' attributes only if it swaps data in place; re-attach
    infshapes = {n: p.infshape for n, p in model.named_parameters()}
    model.to_empty(device=device)
    for n, p in model.named_parameters():
        p.infshape = infshapes[n]
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    init_weights(model, generator)
    return model
