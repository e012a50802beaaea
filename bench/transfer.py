"""Transfer quality at CPU scale: does the telescoped pick match a brute-force grid at the
calibration width, at a fraction of its compute, and beat plain muP transfer?

    .venv/bin/python bench/transfer.py [--rules adam-mup spectral] [--eval-seeds 1 2 3] [--paper-rule] [--quick]

The sweep is sweeps/transfer.toml (lr x init_std; 5x5 at width 32 -> 3x3 at 64 -> 3x3 at 128,
depth 2, seq 64, batch 16, 150 Muon steps, byte-level builtin corpus), run once per Muon
hidden-lr rule ("adam-mup": hidden lr / width_mult, the paper's rule; "spectral":
lr / sqrt(width_mult)). For each rule:

(a) telescoping  `telescope.run.controller.run_sweep` on the spec; its pick is what `export` gives
                 at the calibration width (the refined optimum of the last level). With
                 `--paper-rule`, a second sweep of the same spec under the paper's rule (no rings
                 after level 0, each level centred on the previous optimum: max_shifts = 0,
                 centre = "previous") is evaluated the same way, as "telescoping (paper's rule)".
(b) brute force  the base grid's points (same values, same resolution) run at the calibration
                 width through `telescope.run.dispatch.Dispatcher`, seed 0 like the sweep; its pick is
                 the best grid point.
(c) plain muP    the base-width optimum (level 0 of the same sweep, refined the same way) used
                 unchanged at the calibration width; its cost is level 0's.

Each pick is then trained at the calibration width with the evaluation seeds (default 1, 2, 3:
fresh seeds, so the brute-force winner carries no selection bias; the same seeds for every pick,
so the comparisons are paired). The seed-to-seed spread is the std over those seeds at each
evaluated point (pooled over the points). A pick is "within noise" of the brute-force best when
|mean difference| <= 2 x the standard error of a difference of two independent n-seed means,
2 * sigma * sqrt(2/n).

Beyond the calibration width: one run (seed = the first evaluation seed) at 2x the calibration
width with what `export(..., width=2x)` gives (the calibration optimum, except that an axis whose
optimum the levels measure drifting follows the drift's prediction), and a 3x3 grid centred on the
calibration optimum (spacing `--grid2x-spacing` times the calibration level's spacing, in log
space; its centre is the calibration optimum's own run at 2x), all with the same seed. `find_optimum` (the
sweep's own quadratic refinement) locates the optimum of that grid.

FLOPs are model FLOPs (telescope.core.flops) actually spent by the tuning method: the whole ledger
for telescoping, level 0 for plain muP, the grid for brute force; NS FLOPs are Muon's Newton-Schulz
FLOPs next to them (per step, so their share grows with width), and FLOPs/bf compares the two
summed. Evaluation runs are not counted.
Writes bench/results/transfer.csv (summary) and bench/results/transfer_trials.csv (every run
the bench made outside the sweeps; the sweeps' own rows are in their ledgers under
bench/results/transfer/<rule>/sweep).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine_line, table, write_csv  # noqa: E402
from telescope.core.contract import TrialConfig, TrialResult  # noqa: E402
from telescope.run.controller import run_sweep  # noqa: E402
from telescope.state import sweep_state  # noqa: E402
from telescope.core.corpus import load_corpus  # noqa: E402
from telescope.run.dispatch import Dispatcher, Job, Outcome  # noqa: E402
from telescope.read.export import export  # noqa: E402
from telescope.run.progress import Progress  # noqa: E402
from telescope.spec.sweep import SweepSpec, load_spec  # noqa: E402
from telescope.core.rule import AxisGrid, LevelGrid, Observation, base_grid, find_optimum  # noqa: E402
from telescope.train.trial import run_trial  # noqa: E402

SPEC = ROOT / "sweeps" / "transfer.toml"
RULES = ("adam-mup", "spectral")
QUICK = {  # a minute-scale version: widths 16 -> 32, 3x3 base grid, tiny models
    "base_width": 16, "calibration_width": 32, "target_width": 64, "max_widenings": 1,
    "model": {"depth": 1, "head_dim": 8},
    "training": {"seq_len": 32, "batch_size": 8, "steps": 20, "eval_interval": 20},
    "axes": {"lr": {"low": 0.03, "high": 0.3, "scale": "log", "points": 3},
             "init_std": {"low": 0.01, "high": 0.04, "scale": "log", "points": 3}},
}


def unigram_entropy(data: str) -> float:
    """Entropy (nats) of the corpus's byte distribution: the loss of a model that ignores context."""
    counts = np.bincount(np.asarray(load_corpus(data).train), minlength=256).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


PAPER_RULE = {"max_shifts": 0, "centre": "previous"}  # the paper's telescoping rule, for --paper-rule


def rule_spec(rule: str, quick: bool, folder: Path, paper: bool = False) -> Path:
    data = tomllib.loads(SPEC.read_text())
    data["name"] = f"transfer-{rule}" + ("-paper" if paper else "") + ("-quick" if quick else "")
    data["training"]["hidden_lr_rule"] = rule
    if paper:
        data.update(PAPER_RULE)
    if quick:
        for key, value in QUICK.items():
            if isinstance(value, dict) and key in ("model", "training"):
                data[key].update(value)
            else:
                data[key] = value
    path = folder / ("spec-paper.toml" if paper else "spec.toml")
    path.write_text(tomli_w.dumps(data))
    return path


def loss_of(result: TrialResult | None) -> float:
    if result is None or result.status != "completed" or not math.isfinite(result.final_loss):
        return math.inf
    return float(result.final_loss)


@dataclass
class Runs:
    """Every run the bench makes outside the sweep, keyed by config fingerprint and seed."""

    rule: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> role, cfg, result, done

    @staticmethod
    def key(cfg: TrialConfig) -> str:
        return f"{cfg.fingerprint()}-s{cfg.seed}"

    def job(self, role: str, cfg: TrialConfig) -> Job | None:
        key = self.key(cfg)
        if key in self.rows:
            return None  # the same run was already asked for by another role
        self.rows[key] = {"role": role, "cfg": cfg, "result": None, "done": False}
        return Job(key, run_trial, cfg.replace(num_threads=1))

    def record(self, outcome: Outcome) -> None:
        row = self.rows[outcome.key]
        if not outcome.ok:
            print(f"  {row['role']} run failed: {outcome.error}", file=sys.stderr)
        row["result"], row["done"] = (outcome.value if outcome.ok else None), True

    def done(self, cfg: TrialConfig) -> bool:
        row = self.rows.get(self.key(cfg))
        return row is not None and row["done"]

    def loss(self, cfg: TrialConfig) -> float:
        row = self.rows.get(self.key(cfg))
        return loss_of(row["result"] if row else None)

    def losses(self, spec: SweepSpec, width: int, point: Mapping[str, float], seeds: Sequence[int]) -> list[float]:
        return [self.loss(spec.trial_config(width, point, s)) for s in seeds]

    def flops(self, role: str) -> tuple[float, float]:
        """Model and Newton-Schulz FLOPs the runs of `role` spent."""
        done = [r["result"] for r in self.rows.values() if r["role"] == role and r["result"]]
        return sum(res.flops for res in done), sum(res.optimizer_flops for res in done)

    def csv_rows(self) -> list[dict[str, Any]]:
        out = []
        for r in self.rows.values():
            cfg, res = r["cfg"], r["result"]
            out.append({"rule": self.rule, "role": r["role"], "width": cfg.width, "lr": cfg.lr,
                        "init_std": cfg.init_std, "seed": cfg.seed,
                        "status": res.status if res else "failed", "final_loss": loss_of(res),
                        "flops": res.flops if res else 0.0, "ns_flops": res.optimizer_flops if res else 0.0,
                        "wall_s": res.wall_time_s if res else math.nan})
        return out


def grid_around(spec: SweepSpec, centre: Mapping[str, float], spacing: Mapping[str, float], width: int) -> LevelGrid:
    """A 3-point-per-axis grid centred on `centre` (scale space), as the sweep's own LevelGrid."""
    axes = tuple(AxisGrid(a, a.to_scale(centre[a.name]), spacing[a.name], -1.0, 3) for a in spec.axes)
    return LevelGrid(0, width, axes)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return math.inf, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else math.nan)


def _spent(trials: Any) -> tuple[float, float]:
    """Model and Newton-Schulz FLOPs of ledger rows (a reused ledger's older rows lack NS FLOPs: null)."""
    return float(trials["flops"].sum()), float(trials["optimizer_flops"].fillna(0.0).sum())


@dataclass
class Telescoped:
    """One telescoping sweep of the bench and what it picked at the calibration width."""

    method: str  # the row name in the tables
    paper: bool
    spec: SweepSpec
    sweep_dir: Path
    state: Any
    pick: dict[str, float]
    flops: tuple[float, float]
    trials: int
    level0_flops: tuple[float, float]
    level0_trials: int
    bracketed: bool

    @classmethod
    def run(cls, rule: str, folder: Path, name: str, quick: bool, reuse: bool, paper: bool) -> "Telescoped":
        sweep_dir = folder / name
        if sweep_dir.exists() and not reuse:
            shutil.rmtree(sweep_dir)
        spec_path = rule_spec(rule, quick, folder, paper=paper)
        spec = load_spec(spec_path)
        method = "telescoping (paper's rule)" if paper else "telescoping"
        print(f"[{rule}] (a) {method} sweep {spec.widths} -> {sweep_dir}", flush=True)
        run_sweep(spec_path, sweep_dir, progress=Progress(interval_s=60))
        _, ledger, state = sweep_state(sweep_dir)
        rows = ledger.trials()
        level0 = rows[rows["level"] == 0]
        pick = {n: float(v) for n, v in export(sweep_dir, width=spec.calibration_width)["hyperparameters"].items()}
        return cls(method, paper, spec, sweep_dir, state, pick, _spent(rows), len(rows), _spent(level0),
                   len(level0), all(lvl.bracketed for lvl in state.levels))


def run_rule(rule: str, args: argparse.Namespace, quick: bool, dispatcher: Dispatcher) -> dict[str, Any]:
    folder = args.results / ("transfer_quick" if quick else "transfer") / rule
    folder.mkdir(parents=True, exist_ok=True)
    seeds = list(args.eval_seeds)
    t0 = time.perf_counter()
    sweeps = [Telescoped.run(rule, folder, "sweep", quick, args.reuse, paper=False)]
    if args.paper_rule:
        sweeps.append(Telescoped.run(rule, folder, "sweep-paper", quick, args.reuse, paper=True))
    sweep_s = time.perf_counter() - t0
    spec, state, sweep_dir = sweeps[0].spec, sweeps[0].state, sweeps[0].sweep_dir
    cal, wide = spec.calibration_width, 2 * spec.calibration_width
    mup_flops, mup_trials = sweeps[0].level0_flops, sweeps[0].level0_trials
    names = spec.axis_names
    tele_pick = sweeps[0].pick
    mup_pick = {n: float(v) for n, v in state.levels[0].optimum.point.items()}
    drift = [(lvl.width, dict(lvl.optimum.point)) for lvl in state.levels]
    doc2x = export(sweep_dir, width=wide)
    exported = {n: float(doc2x["hyperparameters"][n]) for n in names}

    # (b) brute force, the evaluations and the 2x-calibration runs, all through one Dispatcher.run
    runs = Runs(rule)
    bf_grid = base_grid(spec.axes, cal)
    bf_points = bf_grid.points()
    cal_spacing = {n: state.levels[-1].grid.spacing(n) * args.grid2x_spacing for n in names}
    grid2x = grid_around(spec, tele_pick, cal_spacing, wide)
    bf_best: dict[str, float] = {}

    def jobs() -> Iterator[Job | None]:
        first = [("2x-grid", spec.trial_config(wide, p, seeds[0])) for p in grid2x.points()]
        first.append(("2x-exported", spec.trial_config(wide, exported, seeds[0])))
        first += [("brute-force", spec.trial_config(cal, p, spec.seeds[0])) for p in bf_points]
        for sw in sweeps:
            first += [(f"eval-{sw.method}", spec.trial_config(cal, sw.pick, s)) for s in seeds]
            if sw.paper:
                first.append((f"2x-{sw.method}", spec.trial_config(wide, sw.pick, seeds[0])))
        first += [("eval-mup", spec.trial_config(cal, mup_pick, s)) for s in seeds]
        for role, cfg in first:
            job = runs.job(role, cfg)
            if job is not None:
                yield job
        while not all(runs.done(spec.trial_config(cal, p, spec.seeds[0])) for p in bf_points):
            yield None  # wait for the brute-force grid before evaluating its winner
        obs = [Observation(p, spec.seeds[0], runs.loss(spec.trial_config(cal, p, spec.seeds[0]))) for p in bf_points]
        best = min(obs, key=lambda o: o.loss)
        bf_best.update(best.point)
        for s in seeds:
            job = runs.job("eval-brute-force", spec.trial_config(cal, best.point, s))
            if job is not None:
                yield job

    t1 = time.perf_counter()
    print(f"[{rule}] (b, c) brute force {bf_grid.shape} at {cal}, evaluations at {cal} (seeds {seeds}), "
          f"{grid2x.shape} grid + exported at {wide}", flush=True)
    dispatcher.run(jobs(), runs.record)
    runs_s = time.perf_counter() - t1
    bf_flops = runs.flops("brute-force")

    # losses at the calibration width over the evaluation seeds
    evals = {m: runs.losses(spec, cal, pt, seeds) for m, pt in
             ((*((sw.method, sw.pick) for sw in sweeps), ("brute force", bf_best), ("plain muP", mup_pick)))}
    stds = [statistics.stdev(v) for v in evals.values() if all(map(math.isfinite, v)) and len(v) > 1]
    sigma = math.sqrt(statistics.fmean([s * s for s in stds])) if stds else math.nan
    tolerance = 2 * sigma * math.sqrt(2 / len(seeds))
    bf_mean, _ = mean_std(evals["brute force"])
    methods = []
    for method, pick, flops, n_trials in (*((sw.method, sw.pick, sw.flops, sw.trials) for sw in sweeps),
                                         ("brute force", bf_best, bf_flops, len(bf_points)),
                                         ("plain muP", mup_pick, mup_flops, mup_trials)):
        mean, std = mean_std(evals[method])
        paired = [a - b for a, b in zip(evals[method], evals["brute force"])]
        delta = mean - bf_mean
        methods.append({
            "rule": rule, "method": method, "trials": n_trials, "flops": flops[0], "ns_flops": flops[1],
            "bracketed": next((sw.bracketed for sw in sweeps if sw.method == method), None),
            "flops_vs_bf": sum(flops) / sum(bf_flops) if sum(bf_flops) else math.nan,
            **{n: pick[n] for n in names},
            "loss_mean": mean, "loss_std": std, "delta_vs_bf": delta,
            "paired_se": (statistics.stdev(paired) / math.sqrt(len(paired))
                          if len(paired) > 1 and all(map(math.isfinite, paired)) else math.nan),
            "within_noise": abs(delta) <= tolerance if math.isfinite(delta) else False,
        })

    # 2x the calibration width
    obs2x = [Observation(p, seeds[0], runs.loss(spec.trial_config(wide, p, seeds[0]))) for p in grid2x.points()]
    loss_calibration = runs.loss(spec.trial_config(wide, tele_pick, seeds[0]))
    loss_exported = runs.loss(spec.trial_config(wide, exported, seeds[0]))
    best2x = min(obs2x, key=lambda o: o.loss)
    try:
        opt2x = find_optimum(grid2x, obs2x)
        fitted = dict(opt2x.point)
        fit_method = opt2x.method
    except Exception as err:  # every run diverged: report, don't crash the table
        fitted, fit_method = {n: math.nan for n in names}, f"none ({err})"

    def offset(point: Mapping[str, float] | None) -> dict[str, float]:
        """Distance from the 2x grid's fitted optimum in units of the 2x grid's spacing (scale space)."""
        if point is None:
            return {n: math.nan for n in names}
        axes = {a.name: a for a in spec.axes}
        return {n: (axes[n].to_scale(point[n]) - axes[n].to_scale(fitted[n])) / cal_spacing[n]
                if math.isfinite(fitted[n]) else math.nan for n in names}

    wide_rows = []
    paper_wide = [(f"calibration optimum ({sw.method})", sw.pick,
                   runs.loss(spec.trial_config(wide, sw.pick, seeds[0]))) for sw in sweeps if sw.paper]
    for label, point, loss in (("calibration optimum", tele_pick, loss_calibration),
                               ("exported", exported, loss_exported),
                               *paper_wide,
                               ("grid best", dict(best2x.point), best2x.loss),
                               (f"grid fit ({fit_method})", fitted, math.nan)):
        wide_rows.append({"rule": rule, "point": label, **{n: (point or {}).get(n, math.nan) for n in names},
                          "loss": loss, "delta_vs_grid_best": loss - best2x.loss,
                          **{f"off_{n}": v for n, v in offset(point).items()}})

    cal_losses = [r["final_loss"] for r in runs.csv_rows() if r["width"] == cal and math.isfinite(r["final_loss"])]
    return {
        "rule": rule, "spec": spec, "methods": methods, "wide": wide_rows, "sigma": sigma,
        "tolerance": tolerance, "drift": drift, "seeds": seeds, "sweep_s": sweep_s, "runs_s": runs_s,
        "bf_grid": bf_grid.shape, "grid2x": grid2x.shape, "trials": runs.csv_rows(), "wide_width": wide,
        "sweeps": sweeps,
        "cal_loss_range": (min(cal_losses, default=math.nan), max(cal_losses, default=math.nan)),
    }


def report(results: list[dict[str, Any]], entropy: float) -> list[dict[str, Any]]:
    summary = []
    names = results[0]["spec"].axis_names
    spec = results[0]["spec"]
    print()
    print(f"transfer: lr x init_std, base width {spec.base_width} -> calibration {spec.calibration_width}, "
          f"depth {spec.fixed.depth}, seq {spec.fixed.seq_len}, batch {spec.fixed.batch_size}, "
          f"{spec.fixed.steps} Muon steps; corpus unigram entropy {entropy:.3f} nats")
    print(f"losses at width {spec.calibration_width}: mean (std) of final validation loss over seeds "
          f"{results[0]['seeds']}; delta = mean - brute-force best's mean; paired SE over the same seeds")
    cols = ["rule", "method", "trials", "FLOPs", "NS FLOPs", "FLOPs/bf", *names, "loss", "std", "delta",
            "paired SE", "within noise"]
    shown = []
    for res in results:
        for m in res["methods"]:
            shown.append({"rule": m["rule"], "method": m["method"], "trials": m["trials"], "FLOPs": m["flops"],
                          "NS FLOPs": m["ns_flops"], "FLOPs/bf": m["flops_vs_bf"], **{n: m[n] for n in names},
                          "loss": m["loss_mean"], "std": m["loss_std"], "delta": m["delta_vs_bf"], "paired SE": m["paired_se"],
                          "within noise": "yes" if m["within_noise"] else "no"})
            summary.append({"table": "calibration", **{k: v for k, v in m.items()}, "sigma": res["sigma"],
                            "tolerance": res["tolerance"]})
    print(table(cols, shown, {"FLOPs": ".3g", "NS FLOPs": ".3g", "FLOPs/bf": ".0%", "loss": ".4f", "std": ".4f", "delta": "+.4f",
                              "paired SE": ".4f", "lr": ".4g", "init_std": ".4g"}))
    for res in results:
        lo, hi = res["cal_loss_range"]
        drift = "  ".join(f"w{w}: " + ", ".join(f"{n}={v:.4g}" for n, v in p.items()) for w, p in res["drift"])
        print(f"[{res['rule']}] seed-to-seed std (pooled over the 3 evaluated points, {len(res['seeds'])} seeds "
              f"each): {res['sigma']:.4f} nats; within-noise tolerance 2*sigma*sqrt(2/n) = {res['tolerance']:.4f}")
        print(f"[{res['rule']}] optimum by level: {drift}")
        print(f"[{res['rule']}] final losses of the bench's width-{res['spec'].calibration_width} runs: "
              f"{lo:.3f}..{hi:.3f} nats (unigram entropy {entropy:.3f}); sweep {res['sweep_s']:.0f} s, "
              f"other runs {res['runs_s']:.0f} s")

    for res in results:
        grid = [r for r in res["trials"] if r["role"] == "brute-force"]
        lrs, inits = sorted({r["lr"] for r in grid}), sorted({r["init_std"] for r in grid})
        cell = {(r["init_std"], r["lr"]): r["final_loss"] for r in grid}
        print(f"[{res['rule']}] brute-force grid at width {res['spec'].calibration_width} (seed 0), rows init_std, "
              "columns lr:")
        print(table(["init_std", *map(str, lrs)],
                    [{"init_std": f"{i:.4g}", **{str(lr): cell.get((i, lr), math.nan) for lr in lrs}} for i in inits],
                    {str(lr): ".3f" for lr in lrs}, headers={str(lr): f"{lr:.4g}" for lr in lrs}))

    print()
    wide = results[0]["wide_width"]
    print(f"at 2x the calibration width ({wide}), one seed ({results[0]['seeds'][0]}) for every run; "
          f"{results[0]['grid2x']} grid centred on the calibration optimum; off_* = distance from the grid's fitted "
          "optimum in grid spacings (log space)")
    cols = ["rule", "point", *names, "loss", "delta_vs_grid_best", *[f"off_{n}" for n in names]]
    rows = [r for res in results for r in res["wide"]]
    print(table(cols, rows, {"lr": ".4g", "init_std": ".4g", "loss": ".4f", "delta_vs_grid_best": "+.4f",
                             **{f"off_{n}": "+.2f" for n in names}}))
    summary += [{"table": "2x calibration", **r} for r in rows]
    print("(single runs: with the seed-to-seed std above, the best of 9 is biased low by about a std; the grid "
          "shares one seed, which makes its points' noise partly common)")

    print()
    for res in results:
        by_method = {m["method"]: m for m in res["methods"]}
        tele, bf, mup = by_method["telescoping"], by_method["brute force"], by_method["plain muP"]
        for sw in res["sweeps"]:
            m = by_method[sw.method]
            print(f"[{res['rule']}] {sw.method}: {sw.trials} trials, every level bracketed: "
                  f"{'yes' if sw.bracketed else 'no'}; gap to brute force {m['delta_vs_bf']:+.4f} "
                  f"(tolerance {res['tolerance']:.4f}), {m['flops_vs_bf']:.0%} of its FLOPs")
        cheaper = tele["flops"] + tele["ns_flops"] < bf["flops"] + bf["ns_flops"]
        closer = abs(tele["delta_vs_bf"]) < abs(mup["delta_vs_bf"])
        print(f"[{res['rule']}] goal: telescoped pick within noise of brute force "
              f"({tele['delta_vs_bf']:+.4f} vs tolerance {res['tolerance']:.4f}): "
              f"{'MET' if tele['within_noise'] else 'MISSED'}; "
              f"at a fraction of its compute ({tele['flops_vs_bf']:.0%}): {'MET' if cheaper else 'MISSED'}; "
              f"closer than plain muP ({abs(tele['delta_vs_bf']):.4f} vs {abs(mup['delta_vs_bf']):.4f}): "
              f"{'MET' if closer else 'MISSED'}")
    if len(results) == 2:
        def method(res: dict, name: str) -> dict:
            return next(m for m in res["methods"] if m["method"] == name)

        def at_2x(res: dict, point: str) -> float:
            return next(w["delta_vs_grid_best"] for w in res["wide"] if w["point"] == point)

        print("rules compared (smaller is better transfer): plain-muP gap at the calibration width "
              + ", ".join(f"{r['rule']} {method(r, 'plain muP')['delta_vs_bf']:+.4f}" for r in results)
              + "; gap to the grid's best at 2x: exported "
              + ", ".join(f"{r['rule']} {at_2x(r, 'exported'):+.4f}" for r in results)
              + ", calibration optimum "
              + ", ".join(f"{r['rule']} {at_2x(r, 'calibration optimum'):+.4f}" for r in results)
              + "; lr drift base -> calibration "
              + ", ".join(f"{r['rule']} x{r['drift'][-1][1]['lr'] / r['drift'][0][1]['lr']:.2f}" for r in results))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=None,
                        help="Muon hidden-lr rules to compare (default: both; --quick: adam-mup)")
    parser.add_argument("--eval-seeds", nargs="+", type=int, default=None,
                        help="seeds for evaluating each pick (default 1 2 3; --quick: 1 2)")
    parser.add_argument("--grid2x-spacing", type=float, default=2.0,
                        help="the 2x-width grid's spacing, in calibration-level spacings (default 2)")
    parser.add_argument("--quick", action="store_true", help="widths 16 -> 32, tiny models: a minute-scale run")
    parser.add_argument("--paper-rule", action="store_true",
                        help="also sweep under the paper's telescoping rule (no rings, centred on the previous "
                             "optimum) and evaluate its pick next to the default rule's")
    parser.add_argument("--reuse", action="store_true",
                        help="continue existing sweep directories instead of starting afresh")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    rules = args.rules or (["adam-mup"] if args.quick else list(RULES))
    args.eval_seeds = args.eval_seeds or ([1, 2] if args.quick else [1, 2, 3])
    if len(args.eval_seeds) < 2 or len(set(args.eval_seeds)) != len(args.eval_seeds):
        parser.error("--eval-seeds needs at least two distinct seeds (the spread is part of the result)")
    print(machine_line(), flush=True)
    # One private local Ray for the whole bench: this Dispatcher starts it, and run_sweep's own
    # Dispatcher finds it running and uses it.
    with Dispatcher(num_cpus=2) as dispatcher:
        t0 = time.perf_counter()
        results = [run_rule(rule, args, args.quick, dispatcher) for rule in rules]
        entropy = unigram_entropy(results[0]["spec"].fixed.data)
        summary = report(results, entropy)
        print(f"total {time.perf_counter() - t0:.0f} s; {machine_line()}")
    suffix = "_quick" if args.quick else ""
    write_csv(args.results / f"transfer{suffix}.csv", summary)
    write_csv(args.results / f"transfer_trials{suffix}.csv", [r for res in results for r in res["trials"]])
    print(f"wrote {args.results / f'transfer{suffix}.csv'} and {args.results / f'transfer_trials{suffix}.csv'}")


if __name__ == "__main__":
    main()
