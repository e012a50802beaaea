"""Orchestration overhead: the same short trials run by telescope's Dispatcher, Ray Tune, Optuna
and a plain loop.

    .venv/bin/python bench/orchestration.py [--trials 32] [--steps 450] [--rounds 2] [--quick]

The work: `--trials` real `telescope.train.trial.run_trial` calls (width 32, depth 2, seq 64, batch 8,
`--steps` Muon steps, one final evaluation; at 450 steps ~3 s on one idle core of the 2-core
development box: the issue's "trials of a few seconds each"), points of an lr x init_std grid. Real trials rather than a
synthetic busy loop, because what an orchestrator must carry is exactly this: worker processes
that import torch, load the corpus and build a model, and Python-heavy small-tensor training steps
that hold the GIL much of the time (which decides how well Optuna's thread-based n_jobs can
overlap them). Every trial runs with 1 torch thread.

A trial's time is measured inside the trial, around `run_trial` only; the one-off per-process
costs (importing torch and telescope, loading the corpus into the process's cache) happen before
the clock starts and so count as the orchestrator's overhead, not as work. That is fair to every
contender: each process pays them once, and a contender that starts a fresh process per trial
pays them per trial.

Contenders, each in its own fresh interpreter (so one's Ray or caches never help another), run in
an interleaved order that rotates every round; medians over the rounds are reported:

- telescope    telescope.run.dispatch.Dispatcher(num_cpus=2).run, 1 CPU per job
- tune         ray.tune.Tuner, tune.grid_search over the same points, tune.with_resources 1 CPU,
               function trainable reporting with ray.tune.report, storage in a temporary dir,
               verbose=0, Tune's defaults otherwise (reuse_actors=False: one actor per trial)
- tune-reuse   the same with TuneConfig(reuse_actors=True), Tune's own remedy for per-trial
               actor start-up
- optuna       optuna study.optimize(n_jobs=2) with a GridSampler over the same points (by index; threads
               in one process)
- sequential   a plain for-loop in one process: 1 slot

Phases, per contender: `e2e` is the whole subprocess, spawn to exit (interpreter start, imports,
Ray start, the run, shutdown), timed by the parent; `startup` is what comes before the first trial
is handed over (imports + ray.init / Dispatcher / study creation); `dispatch` is the run call
itself (Dispatcher.run, Tuner.fit, study.optimize, the loop), from handing over the first trial to
having the last result; `shutdown` is ray.shutdown and the like.

Slot utilisation = sum(trial times) / (slots x phase wall time), slots = 2 (sequential: 1).
Overhead per trial = (slots x phase wall - sum(trial times)) / trials: slot-seconds not spent in
trials, per trial. `peak` is the most trials seen running at once (from their start/end stamps):
it must not exceed the slots, or the utilisation would be inflated by oversubscription.

Writes bench/results/orchestration.csv (one row per contender and round) and prints the medians.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before any heavy import: the child's start-up phase starts here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine_line, median, table, write_csv  # noqa: E402

CONTENDERS = ("telescope", "tune", "tune-reuse", "optuna", "sequential")
SLOTS = {"telescope": 2, "tune": 2, "tune-reuse": 2, "optuna": 2, "sequential": 1}
LRS = (0.01, 0.014, 0.02, 0.028, 0.04, 0.056, 0.08, 0.112, 0.16, 0.224, 0.32)
INITS = (0.01, 0.02, 0.04, 0.08)


# ---- the work (module level: Ray ships it by value from __main__) --------------------------------


def points(n: int) -> list[dict[str, float]]:
    grid = [{"lr": lr, "init_std": s} for lr in LRS for s in INITS]
    if n > len(grid):
        raise SystemExit(f"--trials must be <= {len(grid)}")
    return grid[:n]


def trial_config(point: dict[str, float], steps: int):
    from telescope.core.contract import TrialConfig

    return TrialConfig(width=32, base_width=32, depth=2, head_dim=16, seq_len=64, batch_size=8, steps=steps,
                       eval_interval=steps, eval_batches=2, device="cpu", num_threads=1, seed=0,
                       lr=point["lr"], init_std=point["init_std"])


def work(cfg) -> dict[str, Any]:
    """One trial: run_trial, timed around itself only (imports and the corpus cache come first)."""
    enter = time.time()
    from telescope.core.corpus import load_corpus
    from telescope.train.trial import run_trial

    load_corpus(cfg.data, cfg.vocab_size, cfg.val_frac)  # cached per process after the first call
    start, cpu = time.time(), time.thread_time()  # with 1 torch thread, the trial computes in this thread
    result = run_trial(cfg)
    end, cpu = time.time(), time.thread_time() - cpu
    return {"enter": enter, "start": start, "end": end, "cpu": cpu, "loss": result.final_loss,
            "status": result.status, "proc": os.getpid(), "thread": threading.get_ident()}


def tune_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report(work(trial_config(config["point"], config["steps"])))


# ---- one contender, in a child process ----------------------------------------------------------


def child(name: str, n_trials: int, steps: int) -> dict[str, Any]:
    grid = points(n_trials)
    phases: dict[str, float] = {}
    if name == "telescope":
        from telescope.run.dispatch import Dispatcher, Job, Resources

        dispatcher = Dispatcher(num_cpus=2)
        jobs = [Job(f"t{i}", work, trial_config(p, steps), Resources(num_cpus=1)) for i, p in enumerate(grid)]
        trials: list[dict[str, Any]] = []

        def on_outcome(outcome) -> None:
            if not outcome.ok:
                raise RuntimeError(f"{outcome.key}: {outcome.error}")
            trials.append(outcome.value)

        t1 = time.perf_counter()
        dispatcher.run(jobs, on_outcome)
        t2 = time.perf_counter()
        dispatcher.shutdown()
    elif name in ("tune", "tune-reuse"):
        import ray
        from ray import tune

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        storage = tempfile.mkdtemp(prefix="bench-tune-")
        space = {"point": tune.grid_search(grid), "steps": steps}  # the same points, in the same order
        tuner = tune.Tuner(
            tune.with_resources(tune_trainable, {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(reuse_actors=name == "tune-reuse"),
            run_config=tune.RunConfig(storage_path=storage, name="bench", verbose=0),
        )
        t1 = time.perf_counter()
        results = tuner.fit()
        t2 = time.perf_counter()
        if results.errors:
            raise RuntimeError(f"tune trials failed: {results.errors[0]}")
        keys = ("enter", "start", "end", "cpu", "loss", "status", "proc", "thread")
        trials = [{k: r.metrics[k] for k in keys} for r in results]
        ray.shutdown()
    elif name == "optuna":
        import optuna
        import torch

        torch.set_num_threads(1)  # run_trial restores this after each trial; both threads use 1
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # a grid over the points' indices: the same points as the others, whatever their number
        sampler = optuna.samplers.GridSampler({"point": list(range(len(grid)))}, seed=0)
        study = optuna.create_study(sampler=sampler, direction="minimize")
        trials = []

        def objective(trial) -> float:
            out = work(trial_config(grid[trial.suggest_int("point", 0, len(grid) - 1)], steps))
            trials.append(out)
            return out["loss"]

        t1 = time.perf_counter()
        study.optimize(objective, n_trials=n_trials, n_jobs=2)
        t2 = time.perf_counter()
    elif name == "sequential":
        import torch  # noqa: F401

        trials = []
        t1 = time.perf_counter()
        for p in grid:
            trials.append(work(trial_config(p, steps)))
        t2 = time.perf_counter()
    else:
        raise SystemExit(f"unknown contender {name!r}")
    t3 = time.perf_counter()
    phases = {"startup_s": t1 - _T0, "dispatch_s": t2 - t1, "shutdown_s": t3 - t2}
    return {"contender": name, "trials": trials, "load_1min": os.getloadavg()[0], **phases}


# ---- the parent: run the contenders interleaved, then summarise ----------------------------------


def run_child(name: str, n_trials: int, steps: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, __file__, "--child", name, "--trials", str(n_trials), "--steps", str(steps),
           "--child-out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    e2e = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"contender {name} failed with exit code {proc.returncode}")
    data = json.loads(out.read_text())
    out.unlink()
    data["e2e_s"] = e2e
    return data


def peak_concurrency(trials: list[dict[str, Any]]) -> int:
    events = sorted([(t["start"], 1) for t in trials] + [(t["end"], -1) for t in trials],
                    key=lambda e: (e[0], e[1]))
    peak = now = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


def median_gap(trials: list[dict[str, Any]]) -> float:
    """Median idle time of a worker between one trial's end and its next trial's entry: the
    per-trial hand-over latency, net of warm-up (NaN when no worker ran two trials)."""
    by_worker: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for t in trials:
        by_worker.setdefault((t["proc"], t["thread"]), []).append(t)
    gaps = [b["enter"] - a["end"] for ts in by_worker.values()
            for a, b in zip(sorted(ts, key=lambda t: t["start"]), sorted(ts, key=lambda t: t["start"])[1:])]
    return median(gaps)


def summarise(data: dict[str, Any], round_no: int, order: int) -> dict[str, Any]:
    name, trials = data["contender"], data["trials"]
    slots = SLOTS[name]
    busy = sum(t["end"] - t["start"] for t in trials)
    n = len(trials)
    row = {
        "contender": name, "round": round_no, "order": order, "slots": slots, "trials": n,
        "trial_mean_s": busy / n, "work_s": busy,
        "e2e_s": data["e2e_s"], "startup_s": data["startup_s"], "dispatch_s": data["dispatch_s"],
        "shutdown_s": data["shutdown_s"],
    }
    for phase in ("e2e", "dispatch"):
        wall = data[f"{phase}_s"]
        row[f"util_{phase}"] = busy / (slots * wall)
        row[f"overhead_{phase}_s"] = (slots * wall - busy) / n
    # first call in a process: importing torch/telescope and loading the corpus, before the clock
    warmup = sum(t["start"] - t["enter"] for t in trials)
    row["warmup_s"] = warmup
    row["util_warm"] = busy / (slots * data["dispatch_s"] - warmup)
    row["cpu_share"] = sum(t["cpu"] for t in trials) / busy  # < 1: trials waited for a core (or the GIL)
    row["load_1min"] = data["load_1min"]
    row["gap_s"] = median_gap(trials)
    row["peak"] = peak_concurrency(trials)
    row["processes"] = len({t["proc"] for t in trials})
    row["failed"] = sum(t["status"] != "completed" for t in trials)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32, help="trials per contender")
    parser.add_argument("--steps", type=int, default=450,
                        help="training steps per trial (450: ~3 s on one idle core of the 2-core box)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--quick", action="store_true", help="2 tiny trials, 1 round: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "orchestration.csv")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        data = child(args.child, args.trials, args.steps)
        args.child_out.write_text(json.dumps(data))
        return
    if args.quick:
        args.trials, args.steps, args.rounds = 2, 3, 1
    if not 1 <= args.trials <= len(LRS) * len(INITS):
        parser.error(f"--trials must be between 1 and {len(LRS) * len(INITS)}")

    print(f"orchestration: {args.trials} run_trial calls x {args.steps} steps (width 32, depth 2, seq 64, "
          f"batch 8, 1 thread) per contender, {args.rounds} round(s), contenders in rotating order")
    print(machine_line(), flush=True)
    rows, trial_rows = [], []
    names = list(args.contenders)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for i, name in enumerate(order):
            data = run_child(name, args.trials, args.steps)
            row = summarise(data, r, i)
            rows.append(row)
            trial_rows += [{"contender": name, "round": r, **t} for t in data["trials"]]
            print(f"  round {r} #{i} {name:<10} e2e {row['e2e_s']:6.1f} s  dispatch {row['dispatch_s']:6.1f} s  "
                  f"util {row['util_dispatch']:.1%}  mean trial {row['trial_mean_s']:.2f} s  "
                  f"load {row['load_1min']:.1f}", flush=True)
    # The same work measured without any contention between trials: the sequential contender's
    # sum of trial times in the same round. A contender whose trials slow each other down (threads
    # sharing a GIL) looks busy by its own trial times; against this reference it does not.
    for row in rows:
        ref = [r for r in rows if r["contender"] == "sequential" and r["round"] == row["round"]]
        row["util_vs_seq"] = ref[0]["work_s"] / (row["slots"] * row["dispatch_s"]) if ref else float("nan")
    write_csv(args.out, rows)
    write_csv(args.out.with_name(args.out.stem + "_trials.csv"), trial_rows)

    telescope_rows = [r for r in rows if r["contender"] == "telescope"]
    ref_e2e = median(r["e2e_s"] for r in telescope_rows) if telescope_rows else float("nan")
    ref_dispatch = median(r["dispatch_s"] for r in telescope_rows) if telescope_rows else float("nan")
    summary = []
    for name in names:
        mine = [r for r in rows if r["contender"] == name]
        s: dict[str, Any] = {"contender": name, "slots": SLOTS[name], "trials": mine[0]["trials"]}
        for key in ("trial_mean_s", "cpu_share", "startup_s", "dispatch_s", "shutdown_s", "e2e_s",
                    "util_dispatch", "util_warm", "util_vs_seq", "util_e2e", "overhead_dispatch_s",
                    "overhead_e2e_s", "warmup_s", "gap_s", "load_1min"):
            s[key] = median(r[key] for r in mine)
        s["dispatch_vs_telescope"] = s["dispatch_s"] / ref_dispatch
        s["e2e_vs_telescope"] = s["e2e_s"] / ref_e2e
        s["peak"] = max(r["peak"] for r in mine)
        s["procs"] = max(r["processes"] for r in mine)
        summary.append(s)

    pct, sec = ".1%", ".2f"
    print()
    print(f"dispatch phase (the run call: first trial handed over -> last result), medians over {args.rounds} "
          "round(s)")
    print("  util = sum(trial times) / (slots x wall); excl warm-up: minus each process's one-off import + corpus "
          "load; vs seq: the sequential loop's sum of trial times in the same round / (slots x wall); "
          "ovh = idle slot-seconds per trial; gap = median time a worker waits between trials; cpu = trials' CPU "
          "time / their wall time; peak = most trials at once")
    print(table(
        ["contender", "slots", "trials", "trial_mean_s", "cpu_share", "dispatch_s", "dispatch_vs_telescope",
         "util_dispatch", "util_warm", "util_vs_seq", "overhead_dispatch_s", "gap_s", "peak", "procs", "load_1min"],
        summary,
        {"trial_mean_s": sec, "cpu_share": ".0%", "dispatch_s": ".1f", "dispatch_vs_telescope": sec,
         "util_dispatch": pct, "util_warm": pct, "util_vs_seq": pct, "overhead_dispatch_s": sec, "gap_s": ".3f",
         "load_1min": ".1f"},
        headers={"trial_mean_s": "trial s", "cpu_share": "cpu", "dispatch_s": "wall s",
                 "dispatch_vs_telescope": "x telescope", "util_dispatch": "util", "util_warm": "util excl warm-up",
                 "util_vs_seq": "util vs seq", "overhead_dispatch_s": "ovh/trial s", "gap_s": "gap s", "load_1min": "load"}))
    print()
    print("start-up and end to end (the whole subprocess: interpreter, imports, Ray start, run, shutdown)")
    print(table(
        ["contender", "startup_s", "dispatch_s", "shutdown_s", "e2e_s", "e2e_vs_telescope", "util_e2e",
         "overhead_e2e_s"],
        summary,
        {"startup_s": ".1f", "dispatch_s": ".1f", "shutdown_s": ".1f", "e2e_s": ".1f", "e2e_vs_telescope": sec,
         "util_e2e": pct, "overhead_e2e_s": sec},
        headers={"startup_s": "startup s", "dispatch_s": "dispatch s", "shutdown_s": "shutdown s",
                 "e2e_s": "e2e s", "e2e_vs_telescope": "x telescope", "util_e2e": "util e2e",
                 "overhead_e2e_s": "ovh e2e/trial s"}))

    if telescope_rows:
        tel = summary[names.index("telescope")]
        others = [s for s in summary if s["contender"] in ("tune", "tune-reuse", "optuna")]
        print()
        print(f"goal: telescope keeps both slots >= 95% busy in the dispatch phase: "
              f"{'MET' if tel['util_dispatch'] >= 0.95 else 'MISSED'} ({tel['util_dispatch']:.1%}; "
              f"{tel['util_warm']:.1%} once the workers' one-off warm-up is set aside)")
        for phase, key in (("dispatch phase", "dispatch_s"), ("end to end", "e2e_s")):
            for s in others:
                print(f"goal: telescope at least as fast as {s['contender']} ({phase}): "
                      f"{'MET' if tel[key] <= s[key] else 'MISSED'} ({tel[key]:.1f} s vs {s[key]:.1f} s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
