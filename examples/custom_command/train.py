"""A standalone training script, driven by telescope through the command trainable
(sweeps/custom-command.toml). It knows nothing of telescope or Ray: it takes its settings as
flags, trains, appends its loss curve to OUT/curve.jsonl as it goes and writes its result to
OUT/result.json. Run it by hand just the same:

    python examples/custom_command/train.py --width 64 --lr-hidden 0.005 --out /tmp/trial

The model: a next-byte MLP over a window of the previous bytes (embed each byte, concatenate,
project to width, a few residual GELU layers, a readout). The muP values (per-group learning
rates, init stds, the readout multiplier) come in as flags, filled in by telescope from its
placeholders ({mup_lr_hidden}, ...), so the script needs no muP logic of its own.
"""

import argparse
import json
import math
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def corpus(max_bytes: int = 2 << 20, val_files: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of the Python standard library's own source, split by file: no download."""
    chunks, total = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        chunks.append(f.read_bytes())
        total += len(chunks[-1])
        if total > max_bytes:
            break
    as_array = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8).astype(np.int64)  # noqa: E731
    return as_array(chunks[val_files:]), as_array(chunks[:val_files])


class ByteMLP(nn.Module):
    def __init__(self, width: int, depth: int, context: int):
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.proj = nn.Linear(context * width, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.readout = nn.Linear(width, 256)
        self.output_mult = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.embed(x).flatten(1))
        for layer in self.layers:
            h = h + layer(F.gelu(h))
        return self.readout(h) * self.output_mult


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--window", type=int, default=16, help="bytes of context")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    for group in ("hidden", "embedding", "readout"):
        p.add_argument(f"--lr-{group}", type=float, default=3e-3)
        p.add_argument(f"--init-{group}", type=float, default=0.02)
        p.add_argument(f"--wd-{group}", type=float, default=0.0)
    p.add_argument("--output-mult", type=float, default=1.0)
    p.add_argument("--out", required=True, help="directory for curve.jsonl and result.json")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    torch.manual_seed(a.seed)
    model = ByteMLP(a.width, a.depth, a.window)
    model.output_mult = a.output_mult
    groups = {"embedding": [model.embed.weight], "readout": [model.readout.weight],
              "hidden": [model.proj.weight, *(layer.weight for layer in model.layers)]}
    with torch.no_grad():
        for group, params in groups.items():
            for w in params:
                w.normal_(0.0, getattr(a, f"init_{group}"))
        for m in (model.proj, *model.layers, model.readout):
            m.bias.zero_()
    biases = [model.proj.bias, model.readout.bias, *(layer.bias for layer in model.layers)]
    opt = torch.optim.AdamW(
        [{"params": params, "lr": getattr(a, f"lr_{g}"), "weight_decay": getattr(a, f"wd_{g}")} for g, params in groups.items()]
        + [{"params": biases, "lr": a.lr_embedding, "weight_decay": 0.0}],
        betas=(0.9, 0.95))
    peak = [g["lr"] for g in opt.param_groups]

    train, val = corpus()
    gen = torch.Generator().manual_seed(a.seed)
    train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)

    def batch(tokens: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(tokens) - a.window - 1, (a.batch_size,), generator=g)
        idx = starts[:, None] + torch.arange(a.window + 1)
        window = tokens[idx]
        return window[:, :-1], window[:, -1]

    val_batches = [batch(val_t, torch.Generator().manual_seed(i)) for i in range(8)]
    with open(os.path.join(a.out, "curve.jsonl"), "a") as curve:
        for step in range(a.steps):
            factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps))  # cosine to 10%
            for g, lr in zip(opt.param_groups, peak):
                g["lr"] = lr * factor
            x, y = batch(train_t, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.write(json.dumps({"step": step + 1, "train_loss": loss.item()}) + "\n")
            curve.flush()  # telescope reads the curve as it grows, and stops a run whose loss blows up
        with torch.no_grad():
            val_loss = torch.stack([F.cross_entropy(model(x), y) for x, y in val_batches]).mean().item()
        curve.write(json.dumps({"step": a.steps, "val_loss": val_loss}) + "\n")

    n_params = sum(p.numel() for p in model.parameters())
    tokens = a.steps * a.batch_size  # one predicted byte per window
    result = {"final_loss": val_loss, "tokens": tokens, "flops": 6.0 * n_params * tokens, "n_params": n_params}
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
