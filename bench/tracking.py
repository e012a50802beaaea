"""How well the telescoping rule tracks a drifting optimum, on synthetic landscapes (no Ray, no torch).

    .venv/bin/python bench/tracking.py [--draws 400] [--alphas 0 5 10 20 30 45] [--quick]

Each draw is a bowl in scale space (ln lr x ln init_std) whose optimum drifts with width as
u*(n) = u_inf - alpha/n, run through `telescope.core.rule.simulate` with a seed noise on every
trial. Three rules:

  paper       centre = "previous", max_shifts = 0 (Algorithm 1 as published)
  rings       centre = "previous", max_shifts = 2 (a later level grows rings while its optimum sits
              on an edge)
  rings+drift centre = "drift",    max_shifts = 2 (the default: rings, and from level 2 on each grid
              centred on the fitted drift as far as the levels measure it, at most one spacing
              from the previous optimum)

Per rule and alpha: the share of draws whose final pick lies within half a final grid spacing of
the true optimum at the calibration width on every axis ("tracked"), the pick's true (noise-free)
loss above the true minimum there ("gap"), the share of draws whose every level was bracketed,
and the trials spent. The lr drift alpha is in ln units x width: the demo's x1.68 between widths
32 and 128 is alpha = ln(1.68) / (1/32 - 1/128) = 22; init_std drifts by a random alpha of up
to a quarter of lr's, either way. The landscape's curvature and noise are constants below, with
where they were measured. Prints one table per width schedule and writes bench/results/tracking.csv.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, machine_line, table, write_csv
from telescope.core.rule import Axis, simulate

# The demo's axes and base grid (sweeps/demo.toml).
AXES = (Axis("lr", 1e-3, 1e-1, "log", 5, (0.0, math.inf)), Axis("init_std", 0.005, 0.08, "log", 5, (0.0, math.inf)))
SCHEDULES = {"demo 32->128": [32, 64, 128], "32->256": [32, 64, 128, 256]}
RULES = {
    "paper": {"centre": "previous", "max_shifts": 0},
    "rings": {"centre": "previous", "max_shifts": 2},
    "rings+drift": {"centre": "drift", "max_shifts": 2},
}
# Loss curvature per (ln unit)^2 near the optimum: a quadratic fit to the 3x3 neighbourhood of the
# best point of the demo's level-0 grid; the noise: the transfer benchmark's seed-to-seed spread
# (std). Both are measured in the README.
CURVATURE = {"lr": 0.10, "init_std": 0.11}
NOISE = 0.013
DEMO_ALPHA = math.log(1.68) / (1 / 32 - 1 / 128)


def bowl(d: float) -> float:
    """A convex bowl, d^2 near its floor and steeper on the high side (a learning rate past its
    optimum costs more than one below it): 2 (e^d - 1 - d)."""
    return 2.0 * (math.exp(d) - 1.0 - d)


class Landscape:
    def __init__(self, rng: np.random.Generator, alpha: float, widths: list[int], noise: float):
        self.noise = noise
        self.alpha = {"lr": alpha, "init_std": rng.uniform(-0.25, 0.25) * alpha}
        # the optimum at the base width lies inside the base grid's middle, where a user's range puts it
        start = {"lr": rng.uniform(math.log(0.005), math.log(0.05)),
                 "init_std": rng.uniform(math.log(0.01), math.log(0.04))}
        self.u_inf = {n: start[n] + self.alpha[n] / widths[0] for n in start}
        self.key = int(rng.integers(2**31))

    def optimum(self, width: int) -> dict[str, float]:
        return {n: self.u_inf[n] - self.alpha[n] / width for n in self.u_inf}

    def true_loss(self, point: dict[str, float], width: int) -> float:
        opt = self.optimum(width)
        return 2.0 + sum(CURVATURE[n] * bowl(math.log(point[n]) - opt[n]) for n in opt)

    def __call__(self, point: dict[str, float], width: int, seed: int) -> float:
        # the same trial always gets the same noise, as a real seeded trial does
        rng = np.random.default_rng([self.key, width, seed, *(round(math.log(v) * 1e9) % 2**63 for v in point.values())])
        return self.true_loss(point, width) + self.noise * float(rng.standard_normal())


def run(draws: int, alphas: list[float], seed: int, noises: list[float]) -> list[dict]:
    rows = []
    for noise, (schedule, widths) in ((n, s) for n in noises for s in SCHEDULES.items()):
        final = widths[-1]
        half = {a.name: (a.to_scale(a.high) - a.to_scale(a.low)) / (a.points - 1) / 2 ** (len(widths) - 1) / 2
                for a in AXES}
        for alpha in alphas:
            rng = np.random.default_rng([seed, round(alpha * 1000), len(widths)])
            lands = [Landscape(rng, alpha, widths, noise) for _ in range(draws)]
            for rule, settings in RULES.items():
                tracked, gaps, trials, bracketed = [], [], [], []
                for land in lands:
                    result = simulate(AXES, widths, land, 1, min_points=3, max_widenings=2, **settings)
                    pick, truth = result.optimum.point, land.optimum(final)
                    tracked.append(all(abs(math.log(pick[n]) - truth[n]) <= half[n] for n in truth))
                    best = land.true_loss({n: math.exp(u) for n, u in truth.items()}, final)
                    gaps.append(land.true_loss(pick, final) - best)
                    trials.append(sum(len(lv.observations) for lv in result.levels))
                    bracketed.append(all(lv.bracketed for lv in result.levels))
                rows.append({
                    "noise": noise, "schedule": schedule, "alpha": alpha, "rule": rule, "draws": draws,
                    "tracked": float(np.mean(tracked)), "gap_mean": float(np.mean(gaps)),
                    "gap_p90": float(np.quantile(gaps, 0.9)), "all_bracketed": float(np.mean(bracketed)),
                    "trials_mean": float(np.mean(trials)), "trials_max": int(max(trials)),
                })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=400, help="landscapes per alpha (default 400)")
    parser.add_argument("--alphas", type=float, nargs="+", help="lr drift alphas (default 0 .. 2x the demo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20 draws, 2 alphas: a few seconds")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the CSV goes")
    args = parser.parse_args()
    alphas = args.alphas or ([0.0, 2 * DEMO_ALPHA] if args.quick else [0.0, 5.0, 10.0, 22.0, 33.0, 45.0])
    draws = 20 if args.quick else args.draws
    started = time.perf_counter()
    noises = [NOISE, 0.0]  # the measured noise, and none: the rule's own tracking error
    rows = run(draws, alphas, args.seed, noises)
    print(machine_line())
    print(f"{draws} landscapes per alpha, curvature {CURVATURE}; demo drift alpha = {DEMO_ALPHA:.1f}; "
          f"{time.perf_counter() - started:.1f} s")
    for noise, schedule in ((n, s) for n in noises for s in SCHEDULES):
        print(f"\nwidths {schedule}, seed noise {noise} (std)")
        print(table(["alpha", "rule", "tracked", "gap_mean", "gap_p90", "all_bracketed", "trials_mean", "trials_max"],
                    [r for r in rows if r["schedule"] == schedule and r["noise"] == noise],
                    formats={"alpha": ".0f", "tracked": ".1%", "gap_mean": ".4f", "gap_p90": ".4f",
                             "all_bracketed": ".0%", "trials_mean": ".1f"},
                    headers={"tracked": "tracked (1/2 spacing)", "gap_mean": "loss gap mean",
                             "gap_p90": "gap p90", "all_bracketed": "all bracketed",
                             "trials_mean": "trials mean"}))
    path = write_csv(args.results / ("tracking_quick.csv" if args.quick else "tracking.csv"), rows)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
