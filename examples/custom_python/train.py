"""The trainable telescope calls: `train(ctx)`, named in sweeps/custom-python.toml as
"examples.custom_python.train:train".

ctx (telescope.core.trainable.TrialContext) holds the width, base width and seed, the swept
values, the spec's [model]/[training] settings (ctx.config) and [trainable.settings]
(ctx.settings). The muP library (telescope.train.muon_mup) turns the base lr and init std into
every parameter group's values at this width: Muon for the hidden matrices, AdamW for the rest.
ctx.report feeds the ledger's curve (and stops a diverging run); the returned dict is the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from examples.custom_python.data import batches, corpus
from examples.custom_python.model import Decoder
from telescope.train import muon_mup as mu

VOCAB = 256  # bytes


def schedule(step: int, steps: int, warmup: int, final_frac: float) -> float:
    """Linear warmup, then cosine decay to final_frac of the peak."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def train(ctx) -> dict:
    cfg = ctx.config
    if ctx.num_threads:
        torch.set_num_threads(ctx.num_threads)
    torch.manual_seed(ctx.seed)
    model = Decoder(vocab=VOCAB, width=ctx.width, depth=cfg.depth, head_dim=cfg.head_dim,
                    ffn_mult=ctx.settings["ffn_mult"], seq_len=cfg.seq_len, rope_base=ctx.settings["rope_base"])
    mu.init_weights(model, width=ctx.width, base_width=ctx.base_width, init_std=cfg.init_std,
                    parameterization=cfg.parameterization)
    optimizers = mu.optimizers(model, width=ctx.width, base_width=ctx.base_width, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
                               hidden_lr_rule=cfg.hidden_lr_rule, parameterization=cfg.parameterization)

    train_data, val_data = corpus()
    g = torch.Generator().manual_seed(ctx.seed)
    train_batches = batches(train_data, cfg.batch_size, cfg.seq_len, g)
    val = [next(batches(val_data, cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(i)))
           for i in range(cfg.eval_batches)]

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    val_loss = math.nan
    for step in range(cfg.steps):
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * schedule(step, cfg.steps, cfg.warmup_steps, cfg.final_lr_frac)
        loss = loss_of(*next(train_batches))
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        ctx.report(step + 1, train_loss=loss.item())  # raises TrialDiverged if the loss blows up
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps:
            with torch.no_grad():
                val_loss = torch.stack([loss_of(x, y) for x, y in val]).mean().item()
            ctx.report(step + 1, val_loss=val_loss)

    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    n_params = model.n_params()
    return {"final_loss": val_loss, "tokens": tokens, "flops": 6.0 * n_params * tokens, "n_params": n_params,
            "readout_mult": model.readout.output_mult}
