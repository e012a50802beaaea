"""Trial-engine speed against the plain-PyTorch reference step, at the reference's shapes.

    .venv/bin/python bench/engine.py [--widths 128 256 512] [--steps 20] [--quick]

For each width and optimizer it times `telescope.train.trial.Engine.step` (the very step run_trial
takes, on real corpus batches) against the reference step of ../shared/yardsticks/ref_gpt.py,
in one process, taking one step of each in turn (reference and engine, adamw and muon) so that
the machine's noise (this box is shared) falls on all four alike. The reference is imported from its file: its Block and
its model/optimizer set-up and step are rebuilt here line for line (its `main` only prints), with
its shapes: depth 4, seq 256, batch 16, byte vocab, head_dim 64, 3 warm-up steps.
Each side's step time is its fastest of N turns and the fp32 matmul peak (2048^2, as the
reference measures it, sampled between widths) its fastest sample: on a shared machine the least
disturbed sample is the best estimate of the quiet-machine cost. The peak is the MFU denominator
for both sides. MFU = model FLOPs (telescope.core.flops, the reference's formula) / step time / peak.
`ratio` = reference step / engine step (> 1: the engine is faster). Muon overhead = each side's
muon step over its own adamw step.

The muon rows also time Muon's own step (telescope.train.muon.Muon.step over the hidden matrices,
on the gradients of one real batch) against the same step with the momentum buffer fetched as it
once was, `state.setdefault("momentum_buffer", torch.zeros_like(p))`: Python evaluates the
zeros_like before setdefault looks, so every matrix paid a full-size allocation and fill on every
step. The two alternate in the same run; `setdefault x` = that step / the current one.
Writes bench/results/engine.csv.
"""

from __future__ import annotations

import argparse
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

from bench.common import RESULTS, machine_line, median, table, write_csv  # noqa: E402

from telescope.core.contract import TrialConfig  # noqa: E402
from telescope.train.data import train_batches  # noqa: E402
from telescope.core.flops import flops_per_token, muon_step_flops  # noqa: E402
from telescope.train.muon import Muon  # noqa: E402
from telescope.train.trial import build_engine  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "yardsticks" / "ref_gpt.py"
DEPTH, SEQ_LEN, BATCH, HEAD_DIM, VOCAB, WARMUP = 4, 256, 16, 64, 256, 3


def load_reference():
    spec = importlib.util.spec_from_file_location("ref_gpt", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLOCK = time.perf_counter  # --clock cpu swaps in time.process_time


def matmul_peak_sample(n: int = 2048, k: int = 3) -> float:
    """fp32 FLOP/s of an n x n matmul (the reference's peak, fewer repeats so it can be sampled often)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = CLOCK()
    for _ in range(k):
        a @ b
    return 2 * n**3 / ((CLOCK() - t) / k)


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


def engine_config(width: int, optimizer: str, steps: int) -> TrialConfig:
    """The reference's shapes as a trial."""
    return TrialConfig(width=width, base_width=HEAD_DIM, depth=DEPTH, head_dim=HEAD_DIM, seq_len=SEQ_LEN,
                       batch_size=BATCH, steps=steps, optimizer=optimizer, device="cpu")


def engine_step(width: int, optimizer: str, steps: int) -> Callable[[], object]:
    """A closure over Engine.step, the step run_trial takes, fed real corpus batches."""
    engine = build_engine(engine_config(width, optimizer, WARMUP + steps))
    batches = train_batches(engine.corpus, BATCH, SEQ_LEN, seed=0)
    data = [next(batches) for _ in range(WARMUP + steps)]  # sampled up front: not part of the step
    counter = iter(range(WARMUP + steps))

    def step():
        i = next(counter)
        return engine.step(i, *data[i])
    return step


class SetdefaultMuon(Muon):
    """Muon with the momentum-buffer lookup it used to have: a zero tensor the size of each matrix
    allocated on every step, then thrown away by setdefault once the buffer exists."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
        return super().step(closure)


def muon_steps(width: int) -> dict[str, Callable[[], object]]:
    """Muon's step on the engine's hidden matrices, as built ("current") and with the old buffer
    lookup ("setdefault"), both over the same gradients of one real batch."""
    engine = build_engine(engine_config(width, "muon", WARMUP + 1))
    engine.model(*next(train_batches(engine.corpus, BATCH, SEQ_LEN, seed=0))).backward()
    current = next(opt for opt in engine.optimizers if isinstance(opt, Muon))
    old = SetdefaultMuon([dict(group) for group in current.param_groups], ns_dtype=current.ns_dtype)
    return {"current": current.step, "setdefault": old.step}


def timed(fn: Callable[[], object]) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side (reference: 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both sides (default: torch's, all cores)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: time this process's CPU seconds instead of wall seconds; with --threads 1 "
                             "it ignores time spent descheduled, for a fair comparison on a busy machine")
    parser.add_argument("--quick", action="store_true", help="width 64, 2 timed steps: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine.csv")
    args = parser.parse_args()
    if args.quick:
        args.widths, args.steps = [64], 2

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    print(machine_line(), flush=True)
    ref = load_reference()
    peaks = [matmul_peak_sample()]
    times: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
    muon_times: dict[int, dict[str, list[float]]] = {}  # width -> Muon's own step, current and setdefault
    for width in args.widths:
        # all four steps of a width round-robin, so bursts of load hit every side alike
        fns = {opt: (reference_step(ref, width, opt), engine_step(width, opt, args.steps)) for opt in ("adamw", "muon")}
        alloc = muon_steps(width)
        for _ in range(WARMUP):
            for ref_fn, eng_fn in fns.values():
                ref_fn(), eng_fn()
            for fn in alloc.values():
                fn()
        for opt in fns:
            times[width, opt] = ([], [])
        muon_times[width] = {name: [] for name in alloc}
        for i in range(args.steps):
            for opt, (ref_fn, eng_fn) in fns.items():
                # alternate which side goes first, so neither always follows the other's cache state
                pair = ((0, ref_fn), (1, eng_fn)) if i % 2 == 0 else ((1, eng_fn), (0, ref_fn))
                for side, fn in pair:
                    times[width, opt][side].append(timed(fn))
            for name in (alloc if i % 2 == 0 else reversed(alloc)):
                muon_times[width][name].append(timed(alloc[name]))
        peaks.append(matmul_peak_sample())
        for opt in fns:
            print(f"width {width} {opt}: engine {min(times[width, opt][1]) * 1e3:.1f} ms, "
                  f"reference {min(times[width, opt][0]) * 1e3:.1f} ms", flush=True)
        print(f"width {width} Muon step: current {min(muon_times[width]['current']) * 1e3:.2f} ms, "
              f"setdefault {min(muon_times[width]['setdefault']) * 1e3:.2f} ms", flush=True)
    peak = max(peaks)

    rows = []
    tokens = BATCH * SEQ_LEN
    for width in args.widths:
        model_flops = flops_per_token(width, DEPTH, SEQ_LEN, VOCAB) * tokens
        ns_flops = muon_step_flops(width, DEPTH)
        step = {opt: min(times[width, opt][1]) for opt in ("adamw", "muon")}
        ref_step = {opt: min(times[width, opt][0]) for opt in ("adamw", "muon")}
        muon_step = {name: min(t) for name, t in muon_times[width].items()}
        for opt in ("adamw", "muon"):
            muon = opt == "muon"
            ref_times, eng_times = times[width, opt]
            paired = sorted(r / e for r, e in zip(ref_times, eng_times))
            rows.append({
                "width": width, "optimizer": opt,
                "step_ms": step[opt] * 1e3,
                "tokens_per_s": tokens / step[opt],
                "mfu": model_flops / step[opt] / peak,
                "ref_step_ms": ref_step[opt] * 1e3,
                "ref_mfu": model_flops / ref_step[opt] / peak,
                "ratio": ref_step[opt] / step[opt],
                "paired_ratio": median(paired),
                "paired_q1": paired[len(paired) // 4],
                "paired_q3": paired[(3 * len(paired)) // 4],
                "muon_overhead_pct": 100 * (step["muon"] / step["adamw"] - 1) if muon else float("nan"),
                "ref_muon_overhead_pct": 100 * (ref_step["muon"] / ref_step["adamw"] - 1) if muon else float("nan"),
                "ns_gflop_per_step": ns_flops / 1e9 if muon else 0.0,
                "ns_share_pct": 100 * ns_flops / (model_flops + ns_flops) if muon else 0.0,
                "muon_step_ms": muon_step["current"] * 1e3 if muon else float("nan"),
                "setdefault_step_ms": muon_step["setdefault"] * 1e3 if muon else float("nan"),
                "setdefault_ratio": muon_step["setdefault"] / muon_step["current"] if muon else float("nan"),
                "peak_gflops": peak / 1e9,
                "threads": torch.get_num_threads(),
                "clock": args.clock,
            })

    print(f"\n{torch.get_num_threads()} threads, {args.clock} clock; fp32 matmul peak (best of {len(peaks)} "
          f"samples): {peak / 1e9:.0f} GFLOP/s; {args.steps} timed steps per side")
    print("  step = fastest of the timed steps; ratio = reference step / engine step (> 1: engine faster); "
          "paired = median [quartiles] of reference/engine over adjacent step pairs; muon+% = muon step over "
          "the same side's adamw step; NS = Newton-Schulz FLOPs per Muon step (telescope.core.flops.muon_step_flops); "
          "Muon ms = Muon's own step over the hidden matrices; setdefault x = that step with the old "
          "setdefault(zeros_like) buffer lookup / the current one (same run)")
    shown = [{**r, "paired": f"{r['paired_ratio']:.3f} [{r['paired_q1']:.3f}-{r['paired_q3']:.3f}]"} for r in rows]
    print(table(
        ["width", "optimizer", "step_ms", "tokens_per_s", "mfu", "ref_step_ms", "ref_mfu", "ratio", "paired",
         "muon_overhead_pct", "ref_muon_overhead_pct", "ns_gflop_per_step", "ns_share_pct", "muon_step_ms",
         "setdefault_ratio"],
        shown,
        formats={"step_ms": ".1f", "tokens_per_s": ".0f", "mfu": ".3f", "ref_step_ms": ".1f", "ref_mfu": ".3f",
                 "ratio": ".3f", "muon_overhead_pct": ".1f", "ref_muon_overhead_pct": ".1f",
                 "ns_gflop_per_step": ".2f", "ns_share_pct": ".1f", "muon_step_ms": ".2f",
                 "setdefault_ratio": ".3f"},
        headers={"optimizer": "opt", "step_ms": "step ms", "tokens_per_s": "tok/s", "mfu": "MFU",
                 "ref_step_ms": "ref ms", "ref_mfu": "ref MFU", "paired": "paired ratio",
                 "muon_overhead_pct": "muon+%", "ref_muon_overhead_pct": "ref muon+%",
                 "ns_gflop_per_step": "NS GFLOP", "ns_share_pct": "NS share%", "muon_step_ms": "Muon ms",
                 "setdefault_ratio": "setdefault x"}))
    print(f"\nwrote {write_csv(args.out, rows)}")


if __name__ == "__main__":
    main()
