"""Synthetic sweeps whose noise is known, written through the real ledger (real Parquet, the real
sweep directory, the real replay): lr x weight_decay, the loss a bowl in ln(lr) around a fixed
optimum, weight decay without any effect, and Gaussian seed noise of a known std drawn from each
trial's id (so the same trial always gets the same draw). The rule cannot tell these trials from
trained models; the truth they carry is what the uncertainty and significance rules must find.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from telescope.core.contract import TrialResult
from telescope.spec.sweep import load_spec
from telescope.state import ledger_rows, plan_trial, point_id, replay
from telescope.store.directory import open_sweep_dir
from telescope.store.records import trial_record

SPEC = """\
name = "noisy"
base_width = 16
calibration_width = {calibration_width}
target_width = 1024
seeds = {seeds}
min_points = 3
max_widenings = 1
sampler = {sampler}

[model]
depth = 1
head_dim = 8

[training]
seq_len = 32
batch_size = 8
steps = 10

[axes.lr]
low = 0.001
high = 0.1
scale = "log"
points = 5

[axes.weight_decay]
low = 0.0
high = 0.2
scale = "linear"
points = 5
"""

LR_OPT = 0.02  # the true optimum at every width: no drift
CURVATURE = 0.05  # loss per (ln lr)^2: lr's effect across the base grid is ~0.4, far above the noise
SIGMA = 0.01  # one seed's std of the final loss


def true_loss(point: dict[str, float], lr_opt: float = LR_OPT) -> float:
    """The noise-free loss: weight decay has no effect at all."""
    return 2.4 + CURVATURE * (math.log(point["lr"]) - math.log(lr_opt)) ** 2


def noisy_loss(trial_id: str, point: dict[str, float], sigma: float, lr_opt: float = LR_OPT) -> float:
    rng = np.random.default_rng(int(hashlib.sha256(trial_id.encode()).hexdigest()[:12], 16))
    return true_loss(point, lr_opt) + sigma * float(rng.standard_normal())


def _record(ledger, trials, sigma: float, lr_opt: float) -> None:
    records = []
    for t in trials:
        loss = noisy_loss(t.trial_id, t.point, sigma, lr_opt)
        result = TrialResult(status="completed", final_loss=loss, final_train_loss=loss, tokens=1, flops=1.0,
                             wall_time_s=0.0, device="cpu", steps_done=1, n_params=1)
        records.append(trial_record(t.trial_id, result, axes=t.point, columns={
            "level": t.level, "width": t.config.width, "seed": t.seed, "sampler_trial": t.sampler_trial,
            "point_id": point_id(t.level, t.point)}))
    ledger.append(records)


def _samples(spec, step, rng) -> list:
    """A sampler level's budget of points, drawn uniformly in scale space inside its box, every seed."""
    box = step.grid.box()
    trials = []
    for number in range(len(step.points)):
        point = {}
        for g in step.grid.axes:
            lo, hi = (g.axis.to_scale(v) for v in box[g.axis.name])
            u = float(rng.uniform(lo, hi))
            point[g.axis.name] = math.exp(u) if g.axis.scale == "log" else u
        trials += [plan_trial(spec, step.level, step.width, point, seed, number) for seed in spec.seeds]
    return trials


def build(root: Path, *, seeds: int = 2, calibration_width: int = 64, sigma: float = SIGMA,
          sampler: str = '"grid"', lr_opt: float = LR_OPT) -> Path:
    """The sweep directory root/sweep, every level run to the end; `sampler` as the spec writes
    it (e.g. '["grid", "tpe", "tpe"]'), `lr_opt` the true optimum."""
    root.mkdir(parents=True, exist_ok=True)
    text = SPEC.format(calibration_width=calibration_width, seeds=seeds, sampler=sampler)
    spec_path = root / "noisy.toml"
    spec_path.write_text(text)
    spec, out = load_spec(spec_path), root / "sweep"
    ledger = open_sweep_dir(out, text, spec.fingerprint(), spec.name)
    rng = np.random.default_rng(0)
    while (state := replay(spec, ledger_rows(ledger))).pending is not None:
        pending = state.pending
        fixed = spec.sampler(pending.level).fixed_points
        _record(ledger, pending.missing if fixed else _samples(spec, pending.step, rng), sigma, lr_opt)
    return out
