"""The trial engine on a GPU: step time and MFU by width, eager and compiled; trials per hour with
1, 2 and 4 trials packed on one GPU; one trial on 1 worker and on every GPU of the machine.

    .venv/bin/python bench/gpu.py [--widths 256 512 1024 2048] [--quick] [--out bench/results/gpu.csv]

Meant to finish in under 8 minutes on one modern GPU, and to print one table:

- step: `telescope.train.trial.Engine.step` (build_engine(cfg, device), the step run_trial takes,
  on real corpus batches moved to the device first) at each width, depth 4, head_dim 64, seq 1024,
  batch 16, eager and with TrialConfig(compile=True). Each is timed over its timed steps after
  its warm-up steps (the compiled model compiles in the warm-up: `warm-up s` shows the price),
  the device synchronised at both ends. MFU = model FLOPs per step (telescope.core.flops) / step
  time / the bf16 matmul peak measured in this run (a large bf16 matmul, best of several).
  Muon's Newton-Schulz FLOPs are not in MFU's numerator; `NS share%` says how much they add.
- packing: real trials at the base width through telescope.run.dispatch.Dispatcher on one GPU,
  each asking for 1, 0.5 or 0.25 of it, so 1, 2 or 4 run at once. Trials per hour = trials /
  wall time of the dispatcher's run, start-up of each trial's fresh worker process included (a
  sweep pays it too). `speedup` is against one trial per GPU.
- workers: one trial (the same global batch) as a plain dispatcher job on one GPU, then on every
  GPU of the machine through telescope.run.distributed.distributed_trial (Ray Train, DDP, one GPU
  per worker). With a single GPU the second row is one Ray Train worker: what Ray Train's start
  costs. `wall s` is the launch to result; `speedup` compares the trials' own wall times.

`--quick` runs every part on the CPU in a minute or two, for the tests: tiny widths, a few steps,
no compiled rows (compiling on a CPU takes minutes), packing by CPU fractions of a one-CPU Ray,
and two CPU workers (gloo) for the workers part. Without a GPU the MFU column is against the
measured fp32 matmul peak, and the table's header says so. Writes bench/results/gpu.csv (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine_line, table, write_csv  # noqa: E402
from telescope.core.contract import TrialConfig  # noqa: E402
from telescope.core.flops import flops_per_token, muon_step_flops  # noqa: E402
from telescope.run.dispatch import Dispatcher, Job, Resources  # noqa: E402
from telescope.train.data import train_batches  # noqa: E402
from telescope.train.trial import build_engine, run_trial  # noqa: E402

PACKING = (1, 2, 4)  # trials sharing one GPU


@dataclasses.dataclass(frozen=True)
class Settings:
    """The shapes and counts of one run (full on a GPU, or --quick on the CPU)."""

    device: str
    widths: tuple[int, ...]
    depth: int
    head_dim: int
    seq_len: int
    batch_size: int
    warmup_steps: int
    timed_steps: int
    compile: bool
    trial_steps: int  # of each packed trial and of the workers trial
    trials_per_slot: int  # packed trials per GPU slot
    worker_width: int
    peak_dtype: torch.dtype
    peak_n: int

    def config(self, width: int, steps: int, **changes: Any) -> TrialConfig:
        fields = dict(width=width, base_width=self.head_dim, depth=self.depth, head_dim=self.head_dim,
                      seq_len=self.seq_len, batch_size=self.batch_size, steps=steps, eval_interval=steps,
                      eval_batches=2, device=self.device, optimizer="muon")
        return TrialConfig(**{**fields, **changes})


FULL = Settings(device="cuda", widths=(256, 512, 1024, 2048), depth=4, head_dim=64, seq_len=1024, batch_size=16,
                warmup_steps=5, timed_steps=20, compile=True, trial_steps=200, trials_per_slot=3,
                worker_width=1024, peak_dtype=torch.bfloat16, peak_n=8192)
QUICK = Settings(device="cpu", widths=(32, 64), depth=2, head_dim=16, seq_len=64, batch_size=8, warmup_steps=2,
                 timed_steps=3, compile=False, trial_steps=5, trials_per_slot=1, worker_width=32,
                 peak_dtype=torch.float32, peak_n=1024)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10, samples: int = 5) -> float:
    """FLOP/s of an n x n matmul in `dtype` on `device`, the best of `samples` timings of `reps`."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(samples):
        synchronize(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


# ---------------------------------------------------------------------------- step time and MFU


def step_row(s: Settings, width: int, compiled: bool, peak: float) -> dict[str, Any]:
    """Engine.step at `width`, eager or compiled: warm-up steps, then the timed ones."""
    steps = s.warmup_steps + s.timed_steps
    engine = build_engine(s.config(width, steps, compile=compiled))
    device = engine.device
    batches = train_batches(engine.corpus, s.batch_size, s.seq_len, seed=0)
    data = [tuple(t.to(device) for t in next(batches)) for _ in range(steps)]
    synchronize(device)
    t = time.perf_counter()
    for i in range(s.warmup_steps):
        engine.step(i, *data[i])
    synchronize(device)
    warmup = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(s.warmup_steps, steps):
        engine.step(i, *data[i])
    synchronize(device)
    step = (time.perf_counter() - t) / s.timed_steps
    tokens = s.batch_size * s.seq_len
    model_flops = flops_per_token(width, s.depth, s.seq_len, engine.corpus.vocab_size) * tokens
    ns_flops = muon_step_flops(width, s.depth)
    del engine, data
    if compiled:
        torch._dynamo.reset()  # the next width's model compiles afresh, not against this one's guards
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"part": "step", "setting": "compiled" if compiled else "eager", "width": width,
            "step_ms": step * 1e3, "tokens_per_s": tokens / step, "mfu": model_flops / step / peak,
            "ns_share_pct": 100 * ns_flops / (model_flops + ns_flops), "warmup_s": warmup}


# ---------------------------------------------------------------------------- packing


def packing_rows(s: Settings) -> list[dict[str, Any]]:
    """Real trials at the base width, 1, 2 and 4 to a GPU (on the CPU: to one CPU)."""
    gpu = s.device == "cuda"
    rows = []
    with Dispatcher(num_cpus=None if gpu else 1, num_gpus=1 if gpu else 0) as dispatcher:
        if not gpu:  # CPU jobs reuse worker processes (GPU jobs get fresh ones): start them all first
            warm = s.config(s.widths[0], 1, num_threads=1)
            dispatcher.run([Job(f"warm-{i}", run_trial, warm, Resources(num_cpus=1 / max(PACKING)))
                            for i in range(max(PACKING))], lambda outcome: None)
        for per_slot in PACKING:
            share = 1 / per_slot
            resources = Resources(num_cpus=1, num_gpus=share) if gpu else Resources(num_cpus=share)
            n = per_slot * s.trials_per_slot
            cfg = s.config(s.widths[0], s.trial_steps, num_threads=None if gpu else 1)
            jobs = [Job(f"pack{per_slot}-{i}", run_trial, cfg.replace(seed=i), resources) for i in range(n)]
            outcomes = []
            t = time.perf_counter()
            dispatcher.run(jobs, outcomes.append, max_in_flight=per_slot)
            wall = time.perf_counter() - t
            failed = [o.error for o in outcomes if not o.ok or o.value.status != "completed"]
            if failed:
                raise SystemExit(f"packed trials failed: {failed[0]}")
            trial_s = statistics.median(o.value.wall_time_s for o in outcomes)
            rows.append({"part": "packing", "setting": f"{per_slot} per {'GPU' if gpu else 'CPU'}",
                         "width": s.widths[0], "trials": n, "wall_s": wall, "trial_s": trial_s,
                         "trials_per_hour": n / wall * 3600,
                         "tokens_per_s": n * s.trial_steps * s.batch_size * s.seq_len / wall})
    for r in rows:
        r["speedup"] = r["trials_per_hour"] / rows[0]["trials_per_hour"]
    return rows


# ---------------------------------------------------------------------------- workers


def distributed_row(cfg: TrialConfig, workers: int, resources: Resources) -> dict[str, Any]:
    """One trial on `workers` Ray Train workers (inside the initialised Ray); a row saying why
    not where telescope.run.distributed cannot be imported."""
    setting = f"{workers} worker{'s' if workers > 1 else ''} (Ray Train)"
    try:
        from telescope.run.distributed import distributed_trial
    except ImportError as err:
        return {"part": "workers", "setting": setting, "note": f"skipped: {err}"}
    t = time.perf_counter()
    result = distributed_trial(cfg, workers=workers, resources_per_worker=resources)
    wall = time.perf_counter() - t
    if result.status != "completed":
        raise SystemExit(f"the {workers}-worker trial ended {result.status}: {result.error}")
    return {"part": "workers", "setting": setting, "width": cfg.width, "workers": workers, "wall_s": wall,
            "trial_s": result.wall_time_s, "tokens_per_s": result.tokens / result.wall_time_s,
            "final_loss": result.final_loss}


def worker_rows(s: Settings) -> list[dict[str, Any]]:
    """The same trial on one worker (a plain job, as a sweep runs it) and on every GPU (CPU: 2)."""
    gpu = s.device == "cuda"
    workers = torch.cuda.device_count() if gpu else 2
    cfg = s.config(s.worker_width, s.trial_steps, batch_size=s.batch_size * workers,
                   num_threads=None if gpu else 1)
    one = Resources(num_cpus=1, num_gpus=1) if gpu else Resources(num_cpus=1)
    with Dispatcher(num_cpus=None if gpu else workers, num_gpus=workers if gpu else 0) as dispatcher:
        outcomes = []
        t = time.perf_counter()
        dispatcher.run([Job("one-worker", run_trial, cfg, one)], outcomes.append)
        wall = time.perf_counter() - t
        (outcome,) = outcomes
        if not outcome.ok or outcome.value.status != "completed":
            raise SystemExit(f"the 1-worker trial failed: {outcome.error or outcome.value.error}")
        result = outcome.value
        rows = [{"part": "workers", "setting": "1 worker (task)", "width": cfg.width, "workers": 1,
                 "wall_s": wall, "trial_s": result.wall_time_s, "tokens_per_s": result.tokens / result.wall_time_s,
                 "final_loss": result.final_loss}]
        rows.append(distributed_row(cfg, workers, one))
    if "trial_s" in rows[1]:
        rows[1]["speedup"] = rows[0]["trial_s"] / rows[1]["trial_s"]
        rows[1]["note"] = (f"loss {rows[1]['final_loss']:.4f} vs {rows[0]['final_loss']:.4f}"
                           + ("; one GPU: Ray Train's own cost" if workers == 1 else ""))
    return rows


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="step-time widths (first: packing's)")
    parser.add_argument("--quick", action="store_true", help="every part on the CPU, tiny: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.csv")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    if not args.quick and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: bench/gpu.py measures a GPU; --quick runs its CPU smoke version")
    if args.widths:
        s = dataclasses.replace(s, widths=tuple(args.widths))
    device = torch.device(s.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(machine_line(), flush=True)
    print(f"device: {name}", flush=True)
    start = time.perf_counter()
    peak = matmul_peak(device, s.peak_dtype, s.peak_n)
    peak_name = "bf16" if s.peak_dtype == torch.bfloat16 else "fp32"
    print(f"{peak_name} matmul peak: {peak / 1e12:.3g} TFLOP/s", flush=True)

    rows = []
    for width in s.widths:
        for compiled in (False, True) if s.compile else (False,):
            rows.append(step_row(s, width, compiled, peak))
            r = rows[-1]
            print(f"width {width} {r['setting']}: {r['step_ms']:.2f} ms/step, MFU {r['mfu']:.3f}, "
                  f"warm-up {r['warmup_s']:.1f} s", flush=True)
        if s.compile:
            rows[-1]["speedup"] = rows[-2]["step_ms"] / rows[-1]["step_ms"]
    rows += packing_rows(s)
    print("packing done", flush=True)
    rows += worker_rows(s)
    total = time.perf_counter() - start
    for r in rows:
        r.update(device=name, peak_tflops=peak / 1e12, peak_dtype=peak_name)

    print(f"\n{name}; MFU against the measured {peak_name} matmul peak, {peak / 1e12:.3g} TFLOP/s"
          + ("" if device.type == "cuda" else " (no GPU: the CPU's fp32 peak)")
          + f"; whole run {total:.0f} s" + ("; compiled rows skipped (--quick)" if not s.compile else ""))
    print(f"  step: depth {s.depth}, head_dim {s.head_dim}, seq {s.seq_len}, batch {s.batch_size}, Muon, "
          f"{s.timed_steps} timed steps after {s.warmup_steps} warm-up; packing: {s.trial_steps}-step trials at "
          f"width {s.widths[0]}; workers: a {s.trial_steps}-step trial at width {s.worker_width}, same global batch")
    print(table(
        ["part", "setting", "width", "step_ms", "tokens_per_s", "mfu", "ns_share_pct", "warmup_s",
         "trials_per_hour", "wall_s", "trial_s", "speedup", "note"],
        rows,
        formats={"step_ms": ".2f", "tokens_per_s": ".0f", "mfu": ".3f", "ns_share_pct": ".1f", "warmup_s": ".1f",
                 "trials_per_hour": ".0f", "wall_s": ".1f", "trial_s": ".1f", "speedup": ".2f"},
        headers={"step_ms": "step ms", "tokens_per_s": "tok/s", "mfu": f"MFU ({peak_name})",
                 "ns_share_pct": "NS share%", "warmup_s": "warm-up s", "trials_per_hour": "trials/h",
                 "wall_s": "wall s", "trial_s": "trial s"}))
    print(f"\nwrote {write_csv(args.out, rows)}")


if __name__ == "__main__":
    main()
