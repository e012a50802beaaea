"""Trial-engine speed against the plain-PyTorch reference step, at the reference's shapes.

    .venv/bin/python bench/engine.py [--widths 128 256 512] [--steps N]

For each width and optimizer it times `telescope.trial.Engine.step` (the very step run_trial
takes, on real corpus batches) against the reference step of ../shared/yardsticks/ref_gpt.py,
in one process, taking one step of each in turn (reference and engine, adamw and muon) so that
the machine's noise (this box is shared) falls on all four alike. The reference is imported from its file: its Block and
its model/optimizer set-up and step are rebuilt here line for line (its `main` only prints), with
its shapes: depth 4, seq 256, batch 16, byte vocab, head_dim 64, 3 warm-up steps.
Each side's step time is its fastest of N turns and the fp32 matmul peak (2048^2, as the
reference measures it, sampled between widths) its fastest sample: on a shared machine the least
disturbed sample is the best estimate of the quiet-machine cost. The peak is the MFU denominator
for both sides. MFU = model FLOPs (telescope.flops, the reference's formula) / step time / peak.
`ratio` = reference step / engine step (> 1: the engine is faster). Muon overhead = each side's
muon step over its own adamw step. Writes bench/results/engine.csv.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from telescope.config import TrialConfig  # noqa: E402
from telescope.data import train_batches  # noqa: E402
from telescope.flops import flops_per_token, muon_step_flops  # noqa: E402
from telescope.trial import build_engine  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "yardsticks" / "ref_gpt.py"
DEPTH, SEQ_LEN, BATCH, HEAD_DIM, VOCAB, WARMUP = 4, 256, 16, 64, 256, 3


def load_reference():
    spec = importlib.util.spec_from_file_location("ref_gpt", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matmul_peak_sample(n: int = 2048, k: int = 3) -> float:
    """fp32 FLOP/s of an n x n matmul (the reference's peak, fewer repeats so it can be sampled often)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(k):
        a @ b
    return 2 * n**3 / ((time.perf_counter() - t) / k)


def reference_step(ref, width: int, optimizer: str) -> Callable[[], object]:
    """ref_gpt.main's model, optimizers and step, verbatim but returned instead of timed."""
    d, opt, L, T, B, V = width, optimizer, DEPTH, SEQ_LEN, BATCH, VOCAB
    torch.manual_seed(0)
    emb = nn.Embedding(V, d); blocks = nn.Sequential(*[ref.Block(d) for _ in range(L)]); head = nn.Linear(d, V, bias=False)  # noqa: E702,E501
    model = nn.ModuleList([emb, blocks, head])
    mats = [p for p in blocks.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2 or not any(p is m for m in mats)]
    if opt == "muon":
        opts = [torch.optim.Muon(mats, lr=0.02, adjust_lr_fn="match_rms_adamw"), torch.optim.AdamW(rest, lr=3e-3)]
    else:
        opts = [torch.optim.AdamW(model.parameters(), lr=3e-3)]
    x = torch.randint(0, V, (B, T + 1))

    def step():
        loss = F.cross_entropy(head(blocks(emb(x[:, :-1]))).view(-1, V), x[:, 1:].reshape(-1))
        loss.backward()
        for o in opts: o.step(); o.zero_grad(set_to_none=True)  # noqa: E701,E702
        return loss
    return step


def engine_step(width: int, optimizer: str, steps: int) -> Callable[[], object]:
    """A closure over Engine.step, the step run_trial takes, fed real corpus batches."""
    cfg = TrialConfig(width=width, base_width=HEAD_DIM, depth=DEPTH, head_dim=HEAD_DIM, seq_len=SEQ_LEN,
                      batch_size=BATCH, steps=WARMUP + steps, optimizer=optimizer, device="cpu")
    engine = build_engine(cfg)
    batches = train_batches(engine.corpus, BATCH, SEQ_LEN, seed=0)
    data = [next(batches) for _ in range(WARMUP + steps)]  # sampled up front: not part of the step
    counter = iter(range(WARMUP + steps))

    def step():
        i = next(counter)
        return engine.step(i, *data[i])
    return step


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side (reference: 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both sides (default: torch's, all cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.csv")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    ref = load_reference()
    peaks = [matmul_peak_sample()]
    times: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
    for width in args.widths:
        # all four steps of a width round-robin, so bursts of load hit every side alike
        fns = {opt: (reference_step(ref, width, opt), engine_step(width, opt, args.steps)) for opt in ("adamw", "muon")}
        for _ in range(WARMUP):
            for ref_fn, eng_fn in fns.values():
                ref_fn(), eng_fn()
        for opt in fns:
            times[width, opt] = ([], [])
        for _ in range(args.steps):
            for opt, (ref_fn, eng_fn) in fns.items():
                times[width, opt][0].append(timed(ref_fn))
                times[width, opt][1].append(timed(eng_fn))
        peaks.append(matmul_peak_sample())
        for opt in fns:
            print(f"width {width} {opt}: engine {min(times[width, opt][1]) * 1e3:.1f} ms, "
                  f"reference {min(times[width, opt][0]) * 1e3:.1f} ms", flush=True)
    peak = max(peaks)

    rows = []
    tokens = BATCH * SEQ_LEN
    for width in args.widths:
        model_flops = flops_per_token(width, DEPTH, SEQ_LEN, VOCAB) * tokens
        ns_flops = muon_step_flops(width, DEPTH)
        step = {opt: min(times[width, opt][1]) for opt in ("adamw", "muon")}
        ref_step = {opt: min(times[width, opt][0]) for opt in ("adamw", "muon")}
        for opt in ("adamw", "muon"):
            muon = opt == "muon"
            rows.append({
                "width": width, "optimizer": opt,
                "step_ms": round(step[opt] * 1e3, 1),
                "tokens_per_s": round(tokens / step[opt]),
                "mfu": round(model_flops / step[opt] / peak, 3),
                "ref_step_ms": round(ref_step[opt] * 1e3, 1),
                "ref_mfu": round(model_flops / ref_step[opt] / peak, 3),
                "ratio": round(ref_step[opt] / step[opt], 3),
                "muon_overhead_pct": round(100 * (step["muon"] / step["adamw"] - 1), 1) if muon else None,
                "ref_muon_overhead_pct": round(100 * (ref_step["muon"] / ref_step["adamw"] - 1), 1) if muon else None,
                "ns_gflop_per_step": round(ns_flops / 1e9, 2) if muon else 0.0,
                "ns_share_pct": round(100 * ns_flops / (model_flops + ns_flops), 1) if muon else 0.0,
                "peak_gflops": round(peak / 1e9),
            })

    print(f"\n{torch.get_num_threads()} threads; fp32 matmul peak (best of {len(peaks)} samples): "
          f"{peak / 1e9:.0f} GFLOP/s")
    print("width opt    step_ms   tok/s    MFU  refMFU  ratio  muon+%  ref_muon+%  NS_GFLOP  NS_share%")
    for r in rows:
        blank = lambda v: "" if v is None else v  # noqa: E731
        print(f"{r['width']:>5} {r['optimizer']:<6} {r['step_ms']:>7} {r['tokens_per_s']:>7} {r['mfu']:>6} "
              f"{r['ref_mfu']:>6} {r['ratio']:>6} {blank(r['muon_overhead_pct'])!s:>7} "
              f"{blank(r['ref_muon_overhead_pct'])!s:>11} {r['ns_gflop_per_step']:>9} {r['ns_share_pct']:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
