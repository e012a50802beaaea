"""Muon vs AdamW: how many tokens each needs to reach the same loss, across batch sizes.

The paper (arXiv 2505.02222) reports that Muon needs 10-15% fewer tokens than AdamW for the same
loss, and that the token ratio R(B) = T_AdamW(B) / T_Muon(B) stays above 1 and does not shrink as
the batch size B grows past the critical batch. This module measures that at one fixed width:

    compare spec (TOML) -> every (optimizer, batch size, lr, seed) trial, dispatched on Ray and
    recorded in the study directory's ledger -> best lr per (optimizer, batch size) -> T_opt(B)
    -> R(B) and the tokens-vs-steps picture -> DIR/compare.json and PNG figures

Every run of a study sees the same number of tokens (steps = tokens / (batch_size * seq_len)), so
small batches take many short steps and large ones few long steps. T_opt(B) is read off the
*validation* curve of the best lr's run (the mean over seeds): the validation loss is measured on
fixed held-out windows -- the same windows for every batch size -- so it has no minibatch noise.
A train curve, even smoothed, would cross a target early by luck, and more so at small batches
(noisier batches), which would bias R(B) along B -- the very trend under test. Between two
evaluations the loss is interpolated linearly in log-tokens, the axis on which loss curves are
closest to straight; `ratio_range` says how far the bracketing evaluations alone pin R down.

Each run follows its own full cosine schedule, so a curve that crosses the target mid-run does so
before its lr has decayed, and overstates the tokens a run budgeted to end there would need. Both
optimizers share that bias, except the run that sets an automatic target: it crosses annealed, at
its end. So where the faster optimizer crosses early, R is if anything understated.

The study directory is a sweep directory (telescope.store.ledger): spec.toml, sweep.json, the Parquet
ledger, plus compare.json and the figures. Trial ids are content-addressed
(telescope.core.contract.trial_id), so re-running the same spec skips every recorded trial. A spec may
come back with a wider lr grid, more batch sizes or seeds, or another target: only its new trials
run, and the analysis reads exactly the trials the spec names.

    table = run_compare("sweeps/compare.toml", "runs/compare")      # what `telescope compare` does
    load_compare("runs/compare").table["ratios"]                    # later, e.g. from a report
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from telescope.core.contract import TrialConfig, trial_id
from telescope.core.flops import muon_step_flops
from telescope.core.rule import Axis, base_grid
from telescope.errors import ConfigError
from telescope.run.dispatch import Dispatcher, Job, Outcome, Resources
from telescope.run.outcomes import outcome_record
from telescope.run.progress import Progress
from telescope.spec.fields import (
    NAME_PATTERN,
    read_resources,
    read_seeds,
    read_toml,
    reject_unknown,
    required,
    whole_number,
)
from telescope.spec.sweep import (
    AXIS_BOUNDS,
    MODEL_FIELDS,
    TRAINING_FIELDS,
    read_settings_section,
    spec_path,
)
from telescope.state import row_loss
from telescope.store.directory import (
    META_FILE,
    SPEC_FILE,
    load_sweep_dir,
    open_sweep_dir,
    write_spec,
)
from telescope.store.files import atomic_write
from telescope.store.ledger import Ledger
from telescope.store.lock import SweepLock
from telescope.train.trial import run_trial

KIND = "compare"
OPTIMIZERS = ("muon", "adamw")  # R = T_adamw / T_muon: the study needs both
RESULT_FILE = "compare.json"
FIGURES = {"ratio": "ratio.png", "tradeoff": "tradeoff.png", "curves": "curves.png"}
LEVEL = 0  # one width, one level: the ledger's `level` column and the trial ids' "L0"
PAPER_TOKEN_SAVING = (0.10, 0.15)  # "Muon needs 10-15% fewer tokens": R = 1 / (1 - saving)
TOP_LEVEL_KEYS = (
    "kind", "name", "width", "base_width", "seeds", "batch_sizes", "tokens", "target_loss", "evals",
    "eval_windows", "model", "training", "lr", "resources",
)
LR_KEYS = ("low", "high", "points")
# TrialConfig fields the study sets itself, and from where (for the error message).
SET_BY_STUDY = {
    "width": "the top-level width",
    "base_width": "the top-level base_width",
    "seed": "the top-level seeds",
    "optimizer": "the [lr.muon] and [lr.adamw] tables",
    "lr": "the [lr.muon] and [lr.adamw] tables",
    "batch_size": "the top-level batch_sizes",
    "steps": "tokens / (batch_size * seq_len)",
    "eval_interval": "the top-level evals",
    "eval_batches": "the top-level eval_windows",
    "num_threads": "the dispatcher, from resources.num_cpus",
}
STUDY_TRAINING_FIELDS = tuple(f for f in TRAINING_FIELDS if f not in SET_BY_STUDY)
DEFAULT_EVALS = 16
MIN_EVAL_WINDOWS = 64


# ============================================================================ the spec


@dataclass(frozen=True)
class StudyTrial:
    """One run of the study: an (optimizer, batch size, lr, seed) and the TrialConfig it trains."""

    trial_id: str
    optimizer: str
    batch_size: int
    lr: float
    seed: int
    config: TrialConfig


@dataclass(frozen=True)
class CompareSpec:
    """A validated compare study. `fixed` holds every setting shared by all its trials."""

    name: str
    fixed: TrialConfig  # at the study's width and base_width; per-trial fields are placeholders
    batch_sizes: tuple[int, ...]
    tokens: int  # trained on by every run
    lrs: tuple[tuple[str, tuple[float, ...]], ...]  # (optimizer, its lr grid), in OPTIMIZERS order
    seeds: tuple[int, ...] = (0,)
    target_loss: float | None = None  # None: "auto", the loss every best run reaches
    evals: int = DEFAULT_EVALS  # validation points per run, evenly spaced in steps
    eval_windows: int = MIN_EVAL_WINDOWS  # validation windows, the same for every batch size
    resources: Resources = Resources()
    time_limit_s: float | None = None
    max_retries: int = 3

    @property
    def width(self) -> int:
        return self.fixed.width

    @property
    def seq_len(self) -> int:
        return self.fixed.seq_len

    def lr_grid(self, optimizer: str) -> tuple[float, ...]:
        return dict(self.lrs)[optimizer]

    def steps(self, batch_size: int) -> int:
        return self.tokens // (batch_size * self.seq_len)

    def trial_config(self, optimizer: str, batch_size: int, lr: float, seed: int) -> TrialConfig:
        steps = self.steps(batch_size)
        return self.fixed.replace(
            optimizer=optimizer, batch_size=batch_size, lr=lr, seed=seed, steps=steps,
            eval_interval=max(1, steps // self.evals),
            # the same windows for every batch size: val_batches spreads batch * n windows evenly
            eval_batches=self.eval_windows // batch_size,
        )

    def trials(self) -> list[StudyTrial]:
        out = []
        for optimizer, grid in self.lrs:
            for batch_size in self.batch_sizes:
                for lr in grid:
                    for seed in self.seeds:
                        cfg = self.trial_config(optimizer, batch_size, lr, seed)
                        out.append(StudyTrial(trial_id(LEVEL, cfg), optimizer, batch_size, lr, seed, cfg))
        return out

    def fingerprint(self) -> str:
        """A hash of what every trial shares: the model, data, training settings, tokens and
        evaluation. Two specs with the same fingerprint give the same trial the same id, so a
        study may widen its lr grids or add batch sizes or seeds and reuse every recorded trial;
        target, name and resources only change how the trials are run or read."""
        shared = {"fixed": self.fixed.fingerprint(), "tokens": self.tokens, "evals": self.evals,
                  "eval_windows": self.eval_windows}
        return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def load_compare_spec(path: str | Path) -> CompareSpec:
    return parse_compare_spec(read_toml(path, "compare spec", "sweeps/compare.toml"))


def parse_compare_spec(data: Mapping[str, Any]) -> CompareSpec:
    """Validate a compare spec given as a dict (the TOML layout); errors name the dotted key."""
    if not isinstance(data, Mapping):
        raise ConfigError("spec", f"must be a table of settings; got {type(data).__name__}")
    kind = data.get("kind")
    if kind != KIND:
        hint = "a sweep spec is run with `telescope run`" if kind is None else f"got {kind!r}"
        raise ConfigError("kind", f'a compare spec starts with kind = "{KIND}" ({hint})')
    reject_unknown(data, TOP_LEVEL_KEYS, "")
    name = required(data, "name", 'name = "compare"')
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError("name", f"must be letters, digits, '.', '_' or '-' (it names the run); got {name!r}")
    width = whole_number(required(data, "width", "width = 64"), "width", 1)
    base_width = whole_number(data.get("base_width", width), "base_width", 1)
    seeds = read_seeds(data.get("seeds", 1))
    batch_sizes = _batch_sizes(required(data, "batch_sizes", "batch_sizes = [4, 8, 16, 32]"))
    tokens = whole_number(required(data, "tokens", "tokens = 262144"), "tokens", 1)
    target = _target(data.get("target_loss", "auto"))
    evals = whole_number(data.get("evals", DEFAULT_EVALS), "evals", 2)
    lcm = math.lcm(*batch_sizes)
    windows = whole_number(data.get("eval_windows", lcm * math.ceil(MIN_EVAL_WINDOWS / lcm)), "eval_windows", 1)
    if windows % lcm:
        raise ConfigError(
            "eval_windows",
            f"must be a multiple of every batch size (of {lcm}), so each batch size is scored on the "
            f"same validation windows; got {windows}",
        )
    for section in ("model", "training"):
        table = data.get(section, {})
        for key in table if isinstance(table, Mapping) else ():
            if key in SET_BY_STUDY:
                raise ConfigError(f"{section}.{key}", f"set by {SET_BY_STUDY[key]}; remove it here")
    settings = {
        **read_settings_section(data, "model", MODEL_FIELDS, ()),
        **read_settings_section(data, "training", STUDY_TRAINING_FIELDS, ()),
    }
    lrs = _lr_grids(data.get("lr"))
    resources, time_limit, retries = read_resources(data.get("resources", {}), 1)
    try:
        fixed = TrialConfig(**settings, width=width, base_width=base_width, seed=seeds[0])
    except ConfigError as err:
        where = err.field if err.field in ("width", "base_width") else spec_path(err.field, ())
        raise ConfigError(where, err.message) from None
    if fixed.data.endswith(".bin") and fixed.vocab_size is None:
        raise ConfigError("training.vocab_size", "required when training.data is a .bin token file")
    for b in batch_sizes:
        if tokens % (b * fixed.seq_len):
            raise ConfigError(
                "tokens",
                f"must be a multiple of batch_size * seq_len for every batch size, so every run sees the "
                f"same tokens; {tokens} is not a multiple of {b} * {fixed.seq_len}: use a multiple of "
                f"{lcm * fixed.seq_len}",
            )
    spec = CompareSpec(
        name=name, fixed=fixed, batch_sizes=batch_sizes, tokens=tokens, lrs=lrs, seeds=seeds,
        target_loss=target, evals=evals, eval_windows=windows, resources=resources[0],
        time_limit_s=time_limit, max_retries=retries,
    )
    spec.trials()  # every trial's config must be valid now, not after half the study has run
    return spec


def _batch_sizes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("batch_sizes", f"must be a non-empty list of batch sizes, e.g. [4, 8, 16, 32]; got {value!r}")
    for b in value:
        whole_number(b, "batch_sizes", 1)
    if len(set(value)) != len(value):
        raise ConfigError("batch_sizes", f"must not repeat a batch size; got {value!r}")
    return tuple(sorted(value))


def _target(value: Any) -> float | None:
    if value == "auto":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    raise ConfigError("target_loss", f'must be "auto" or a positive validation loss (nats/token); got {value!r}')


def _lr_grids(value: Any) -> tuple[tuple[str, tuple[float, ...]], ...]:
    example = "[lr.muon] and [lr.adamw], each with low, high, points (log-spaced)"
    if not isinstance(value, Mapping):
        raise ConfigError("lr", f"must be the tables {example}")
    reject_unknown(value, OPTIMIZERS, "lr.")
    grids = []
    for optimizer in OPTIMIZERS:
        path = f"lr.{optimizer}"
        table = value.get(optimizer)
        if not isinstance(table, Mapping):
            raise ConfigError(path, f"missing or not a table; the study compares both optimizers: give {example}")
        reject_unknown(table, LR_KEYS, f"{path}.")
        for key, ex in (("low", "1e-3"), ("high", "3e-2"), ("points", "3")):
            required(table, key, f"{key} = {ex}", f"{path}.")
        low, high = (float(table[k]) if isinstance(table[k], int) and not isinstance(table[k], bool) else table[k]
                     for k in ("low", "high"))
        try:  # the sweep's own axis: the same validation and the same log-spaced values
            axis = Axis("lr", low, high, "log", table["points"], AXIS_BOUNDS["lr"])
        except ConfigError as err:
            raise ConfigError(err.field.replace("axes.lr", path), err.message) from None
        grids.append((optimizer, base_grid([axis], 1).axis_values("lr")))
    return tuple(grids)


# ============================================================================ the maths (pure)


def crossing(tokens: Sequence[float], losses: Sequence[float], target: float) -> tuple[int | None, int] | None:
    """Where a loss curve first reaches `target`: (index of the last finite evaluation before it,
    None if there is none; index of the first evaluation at or below the target), or None if it
    never does. Non-finite losses (evaluations of a run that was diverging) are skipped."""
    if len(tokens) != len(losses):
        raise ConfigError("curve", f"has {len(losses)} losses for {len(tokens)} token counts; they must match")
    if any(not t > 0 for t in tokens) or any(b <= a for a, b in zip(tokens, tokens[1:])):
        raise ConfigError("curve", "token counts must be positive and increasing")
    previous = None
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            continue
        if loss <= target:
            return previous, i
        previous = i
    return None


def time_to_target(tokens: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """Tokens at which a loss curve first reaches `target`, or None if it never does.

    Between the last evaluation above the target and the first at or below it, the loss is taken
    as linear in log(tokens). A curve already at or below the target at its first evaluation gives
    that evaluation's tokens: nothing was measured earlier, so it is an upper bound (`censored`).
    """
    found = crossing(tokens, losses, target)
    if found is None:
        return None
    before, at = found
    if before is None or losses[at] == target:  # exactly on a point: no rounding through log/exp
        return float(tokens[at])
    t0, t1, l0, l1 = tokens[before], tokens[at], losses[before], losses[at]
    frac = (l0 - target) / (l0 - l1)
    return math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0)))


def token_ratio(t_adamw: float | None, t_muon: float | None) -> float | None:
    """R = T_AdamW / T_Muon: above 1 when Muon needs fewer tokens; None if either never got there."""
    if t_adamw is None or t_muon is None:
        return None
    return t_adamw / t_muon


def ratio_range(adamw_bracket: Sequence[float | None] | None,
                muon_bracket: Sequence[float | None] | None) -> list[float | None] | None:
    """The R that the evaluations allow, whatever the curves did between them: each T lies in its
    crossing's bracket [tokens of the last evaluation above the target, of the first at or below
    it], so R lies in [adamw low / muon high, adamw high / muon low]. A censored crossing has no
    low end (None): it gives R no lower bound for AdamW's, no upper bound for Muon's."""
    if adamw_bracket is None or muon_bracket is None:
        return None
    (a_lo, a_hi), (m_lo, m_hi) = adamw_bracket, muon_bracket
    return [None if a_lo is None else a_lo / m_hi, None if m_lo is None else a_hi / m_lo]


def auto_target(minima: Sequence[float]) -> float:
    """The highest of the runs' lowest losses: the best loss the worst run reaches, so that every
    curve crosses it (the worst one at its own minimum)."""
    finite = [m for m in minima if math.isfinite(m)]
    if not finite:
        raise ConfigError("target_loss", "no run has a finite validation loss to set an automatic target from")
    return max(finite)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better on both),
    ordered by the first coordinate. Equal points do not beat each other."""
    front = [
        i for i, (x, y) in enumerate(points)
        if not any(xo <= x and yo <= y and (xo < x or yo < y) for xo, yo in points)
    ]
    return sorted(front, key=lambda i: points[i])


def weakly_dominated(point: tuple[float, float], by: Sequence[tuple[float, float]]) -> bool:
    """Whether some point of `by` is at least as good as `point` on both coordinates."""
    return any(x <= point[0] and y <= point[1] for x, y in by)


def ratio_trend(batch_sizes: Sequence[float], ratios: Sequence[float]) -> float | None:
    """Least-squares slope of R against log2(B): how much R changes per doubling of the batch.
    None with fewer than two batch sizes."""
    if len(batch_sizes) != len(ratios):
        raise ConfigError("ratios", "need one ratio per batch size")
    if len(batch_sizes) < 2:
        return None
    x = np.log2(np.asarray(batch_sizes, dtype=float))
    slope, _ = np.polyfit(x, np.asarray(ratios, dtype=float), 1)
    return float(slope)


def mean_curve(curves: Sequence[tuple[Sequence[int], Sequence[float]]]) -> tuple[list[int], list[float]]:
    """The seed-mean of loss curves at the steps they all measured."""
    common = sorted(set.intersection(*(set(steps) for steps, _ in curves))) if curves else []
    at = [dict(zip(steps, losses)) for steps, losses in curves]
    return common, [float(np.mean([c[s] for c in at])) for s in common]


# ============================================================================ running


def run_compare(spec_path: str | Path, out: str | Path, *, address: str | None = None,
                num_cpus: int | None = None, progress: Progress | None = None, plot: bool = True) -> dict[str, Any]:
    """Run (or finish) the study of the spec at `spec_path` in directory `out`; return its table.

    Writes out/compare.json and, with `plot`, the figures named in FIGURES.
    """
    spec = load_compare_spec(spec_path)
    text = Path(spec_path).read_text(encoding="utf-8")
    out = Path(out)
    progress = progress or Progress()
    _refuse_other_dir(out, spec)
    with SweepLock(out):
        ledger = open_sweep_dir(out, text, spec.fingerprint(), spec.name)
        if (out / SPEC_FILE).read_text(encoding="utf-8") != text:
            write_spec(out, text)  # grids, target, ...: the copy says what was analysed
        _run_missing(spec, ledger, address, num_cpus, progress)
        table = analyse(spec, ledger)
        if plot:
            table["figures"] = plot_compare(table, out)
        else:  # figures of an earlier analysis would disagree with the new compare.json
            for name in FIGURES.values():
                (out / name).unlink(missing_ok=True)
        atomic_write(out / RESULT_FILE, json.dumps(table, indent=2) + "\n")
    return table


def _refuse_other_dir(out: Path, spec: CompareSpec) -> None:
    """Say plainly what an unusable existing directory is. open_sweep_dir refuses both too, but
    its message speaks of sweeps and points at `telescope resume`."""
    if not (out / META_FILE).is_file():
        return
    if not is_compare_dir(out):
        raise ConfigError(str(out), "is a telescope sweep directory, not a compare study's; use a new --out")
    if load_sweep_dir(out)[2]["spec_fingerprint"] != spec.fingerprint():
        raise ConfigError(
            str(out),
            "holds another compare study (other model, data, training settings, tokens or evaluation); "
            "use a new --out (lr grids, batch sizes, seeds, target_loss, name and resources may change)",
        )


def is_compare_dir(path: str | Path) -> bool:
    """Whether `path` is a compare study's directory (its spec copy says kind = "compare")."""
    try:
        return tomllib.loads((Path(path) / SPEC_FILE).read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def _run_missing(spec: CompareSpec, ledger: Ledger, address: str | None, num_cpus: int | None,
                 progress: Progress) -> None:
    trials = spec.trials()
    recorded = ledger.recorded_ids()  # any status: a failed or diverged trial is not rerun either
    missing = [t for t in trials if t.trial_id not in recorded]
    progress.note(
        f"compare {spec.name!r}: muon vs adamw at width {spec.width}, batch sizes "
        f"{', '.join(map(str, spec.batch_sizes))}, {spec.tokens:,} tokens per run; "
        f"{len(trials)} trials, {len(missing)} to run"
    )
    if not missing:
        return
    # Longest first, so the last trials to finish are short ones: small batches take the most
    # steps for the same tokens, and Muon's steps cost more than AdamW's.
    missing.sort(key=lambda t: (t.batch_size, t.optimizer != "muon"))
    by_id = {t.trial_id: t for t in missing}
    # Ray reuses worker processes, so torch's thread count must come from the task's own CPUs.
    threads = max(1, int(spec.resources.num_cpus))
    jobs = (Job(t.trial_id, run_trial, t.config.replace(num_threads=threads), spec.resources, spec.time_limit_s)
            for t in missing)

    def record(outcome: Outcome) -> None:
        t = by_id[outcome.key]
        rec = outcome_record(
            t.trial_id, outcome, axes={"lr": t.lr},
            columns={"level": LEVEL, "width": t.config.width, "seed": t.seed,
                     "optimizer": t.optimizer, "batch_size": t.batch_size},
        )
        ledger.append([rec])
        progress.record(str(rec.row["status"]), row_loss(rec.row), {"lr": t.lr, "batch": t.batch_size},
                        was_running=True)

    progress.start_level(LEVEL, spec.width, len(missing))
    with Dispatcher(address, num_cpus=num_cpus, max_retries=spec.max_retries) as dispatcher:
        dispatcher.run(_counted(jobs, progress), record)
    progress.end_level(f"{len(missing)} trials recorded in {ledger.path}")
    ledger.compact()


def _counted(jobs: Any, progress: Progress) -> Any:
    for job in jobs:
        progress.submitted()
        yield job


# ============================================================================ analysis


def analyse(spec: CompareSpec, ledger: Ledger) -> dict[str, Any]:
    """The study's table (what compare.json holds) from the ledger's rows and curves."""
    trials = spec.trials()
    rows = {r["trial_id"]: r for r in ledger.trials().to_dict("records")}
    curves_df = ledger.curves()
    curves_df = curves_df[curves_df["val_loss"].notna()]
    val_curves = {tid: (g["step"].tolist(), g["val_loss"].tolist()) for tid, g in curves_df.groupby("trial_id")}
    notes: list[str] = []

    cells = []
    for optimizer, grid in spec.lrs:
        for b in spec.batch_sizes:
            runs = [t for t in trials if t.optimizer == optimizer and t.batch_size == b]
            cells.append(_cell(spec, optimizer, b, grid, runs, rows, val_curves, notes))

    minima = [min(c["curve"]["val_loss"]) for c in cells if c["curve"]["val_loss"]]
    target = spec.target_loss if spec.target_loss is not None else auto_target(minima)
    for c in cells:
        _time_to_target(spec, c, target, notes)

    ratios = []
    for b in spec.batch_sizes:
        at_b = {c["optimizer"]: c for c in cells if c["batch_size"] == b}
        t = {opt: c["tokens_to_target"] for opt, c in at_b.items()}
        ratios.append({"batch_size": b, "tokens_adamw": t["adamw"], "tokens_muon": t["muon"],
                       "ratio": token_ratio(t["adamw"], t["muon"]),
                       "ratio_range": ratio_range(at_b["adamw"]["target_bracket"], at_b["muon"]["target_bracket"])})
    table = {
        "name": spec.name,
        "width": spec.width,
        "base_width": spec.fixed.base_width,
        "depth": spec.fixed.depth,
        "seq_len": spec.seq_len,
        "tokens_per_run": spec.tokens,
        "seeds": list(spec.seeds),
        "target_loss": target,
        "target_rule": "given in the spec" if spec.target_loss is not None
        else "auto: the highest of the best runs' lowest validation losses, so every best run reaches it",
        "measured_on": "validation loss (the same held-out windows for every batch size), seed mean, "
                       "interpolated linearly in log-tokens between evaluations",
        "cells": cells,
        "ratios": ratios,
        "pareto": _pareto(cells),
        "notes": notes,
        "figures": {},
    }
    table["claim"] = _claim(ratios, table["pareto"])
    return table


def _cell(spec: CompareSpec, optimizer: str, batch_size: int, grid: Sequence[float], runs: list[StudyTrial],
          rows: Mapping[str, Mapping[str, Any]], val_curves: Mapping[str, tuple[list, list]],
          notes: list[str]) -> dict[str, Any]:
    """One (optimizer, batch size): its lr sweep and its best lr's seed-mean validation curve."""
    lr_rows = []
    for lr in grid:
        seed_rows = [rows.get(t.trial_id) for t in runs if t.lr == lr]
        losses = [row_loss(r) if r is not None else math.inf for r in seed_rows]
        statuses = sorted({str(r["status"]) if r is not None else "missing" for r in seed_rows})
        mean = float(np.mean(losses)) if all(map(math.isfinite, losses)) else math.inf
        lr_rows.append({"lr": lr, "final_loss": _finite(mean), "status": "/".join(statuses)})
    scored = [(r["final_loss"], r["lr"]) for r in lr_rows if r["final_loss"] is not None]
    best_lr = min(scored)[1] if scored else None
    cell: dict[str, Any] = {
        "optimizer": optimizer, "batch_size": batch_size, "steps": spec.steps(batch_size),
        "lrs": lr_rows, "best_lr": best_lr, "best_lr_on_edge": False,
        "curve": {"tokens": [], "val_loss": []}, "final_loss": None, "flops_per_token": None, "wall_time_s": None,
    }
    label = f"{optimizer} at batch {batch_size}"
    if best_lr is None:
        notes.append(f"{label}: no lr completed on every seed, so it has no time to target")
        return cell
    if len(grid) >= 3 and best_lr in (grid[0], grid[-1]):
        cell["best_lr_on_edge"] = True
        notes.append(f"{label}: the best lr {best_lr:g} is on the edge of its grid; the optimum may lie beyond it")
    best = [t for t in runs if t.lr == best_lr]
    steps, losses = mean_curve([val_curves[t.trial_id] for t in best])
    row = rows[best[0].trial_id]
    cell["curve"] = {"tokens": [s * batch_size * spec.seq_len for s in steps], "val_loss": losses}
    cell["final_loss"] = losses[-1]
    cell["flops_per_token"] = float(row["flops"]) / float(row["tokens"])  # model FLOPs (6ND + attention)
    cell["wall_time_s"] = float(np.mean([rows[t.trial_id]["wall_time_s"] for t in best]))
    return cell


def _time_to_target(spec: CompareSpec, cell: dict[str, Any], target: float, notes: list[str]) -> None:
    tokens, losses = cell["curve"]["tokens"], cell["curve"]["val_loss"]
    t = time_to_target(tokens, losses, target) if tokens else None
    cell["tokens_to_target"] = t
    found = crossing(tokens, losses, target) if tokens else None
    cell["censored"] = found is not None and found[0] is None
    # the evaluations the crossing was interpolated between: how precisely T is known
    if found is None:
        cell["target_bracket"] = None
    else:
        before, at = found
        cell["target_bracket"] = [None if before is None else tokens[before], tokens[at]]
    label = f"{cell['optimizer']} at batch {cell['batch_size']}"
    if t is None:
        cell["steps_to_target"] = cell["flops_to_target"] = None
        if tokens:
            notes.append(f"{label}: never reached the target {target:.4f} (lowest {min(losses):.4f})")
        return
    if cell["censored"]:
        notes.append(f"{label}: already below the target at its first evaluation, so its time to target "
                     "is an upper bound; raise evals")
    steps = t / (cell["batch_size"] * spec.seq_len)
    # Muon's Newton-Schulz work is paid per step, not per token: count it, or small batches flatter Muon.
    optimizer_flops = steps * muon_step_flops(spec.width, spec.fixed.depth, spec.fixed.mlp_ratio) \
        if cell["optimizer"] == "muon" else 0.0
    cell["steps_to_target"] = steps
    cell["flops_to_target"] = t * cell["flops_per_token"] + optimizer_flops


def _pareto(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per optimizer, the batch sizes on its Pareto front of (steps, tokens) to target; and how
    many of AdamW's front points some Muon point matches or beats on both."""
    out: dict[str, Any] = {}
    points: dict[str, list[tuple[float, float]]] = {}
    fronts: dict[str, list[int]] = {}
    for optimizer in OPTIMIZERS:
        mine = [c for c in cells if c["optimizer"] == optimizer and c["tokens_to_target"] is not None]
        points[optimizer] = [(c["steps_to_target"], c["tokens_to_target"]) for c in mine]
        fronts[optimizer] = pareto_front(points[optimizer])
        out[optimizer] = [mine[i]["batch_size"] for i in fronts[optimizer]]
    adamw_front = [points["adamw"][i] for i in fronts["adamw"]]
    matched = sum(weakly_dominated(p, points["muon"]) for p in adamw_front)
    out["adamw_front_matched_by_muon"] = [matched, len(adamw_front)]
    return out


def _claim(ratios: list[dict[str, Any]], pareto: Mapping[str, Any]) -> dict[str, Any]:
    measured = [r for r in ratios if r["ratio"] is not None]
    trend = ratio_trend([r["batch_size"] for r in measured], [r["ratio"] for r in measured])
    above = sum(r["ratio"] > 1 for r in measured)
    all_above = bool(measured) and above == len(ratios)
    not_shrinking = trend is not None and trend >= 0
    return {
        "statement": "R(B) = T_AdamW/T_Muon > 1 at every batch size and not shrinking as B grows",
        "ratios_above_one": [above, len(ratios)],
        "trend_per_doubling": trend,
        "all_above_one": all_above,
        "not_shrinking": not_shrinking,
        "holds": all_above and not_shrinking,
        "mean_ratio": float(np.mean([r["ratio"] for r in measured])) if measured else None,
        "adamw_front_matched_by_muon": pareto["adamw_front_matched_by_muon"],
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # strict JSON has no inf or NaN


# ============================================================================ reading back


@dataclass
class CompareResult:
    """A finished study as its directory holds it: the table of compare.json and its figures."""

    directory: Path
    table: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG that exists


def load_compare(directory: str | Path) -> CompareResult:
    """Read a study directory's compare.json and the figures it lists (those still present)."""
    directory = Path(directory)
    load_sweep_dir(directory)  # a clear error for something that is not a study directory at all
    path = directory / RESULT_FILE
    if not path.is_file():
        raise ConfigError(str(directory), f"has no {RESULT_FILE} yet; run `telescope compare SPEC --out {directory}`")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), f"is unreadable ({err}); run the study again to rewrite it") from None
    figures = {name: directory / file for name, file in table.get("figures", {}).items()
               if (directory / file).is_file()}
    return CompareResult(directory, table, figures)


def format_table(table: Mapping[str, Any]) -> str:
    """The study's answer as text: R(B) per batch size and what it says about the claim."""
    cells = {(c["optimizer"], c["batch_size"]): c for c in table["cells"]}

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = [
        f"Muon vs AdamW at width {table['width']} (depth {table['depth']}, seq {table['seq_len']}), "
        f"{table['tokens_per_run']:,} tokens per run",
        f"target validation loss {table['target_loss']:.4f} ({table['target_rule']})",
        f"{'batch':>6} {'steps':>6} {'lr muon':>8} {'lr adamw':>8} {'T muon':>10} {'T adamw':>10} "
        f"{'steps muon':>10} {'steps adamw':>11} {'R':>6} {'R range':>13}",
    ]
    for r in table["ratios"]:
        b = r["batch_size"]
        m, a = cells[("muon", b)], cells[("adamw", b)]
        lines.append(
            f"{b:>6} {m['steps']:>6} {num(m['best_lr'], '.3g'):>8} {num(a['best_lr'], '.3g'):>8} "
            f"{num(r['tokens_muon'], ',.0f'):>10} {num(r['tokens_adamw'], ',.0f'):>10} "
            f"{num(m['steps_to_target'], '.1f'):>10} {num(a['steps_to_target'], '.1f'):>11} "
            f"{num(r['ratio'], '.3f'):>6} {_range(r['ratio_range']):>13}"
        )
    c = table["claim"]
    trend = "-" if c["trend_per_doubling"] is None else f"{c['trend_per_doubling']:+.3f}"
    matched, front = c["adamw_front_matched_by_muon"]
    lines += [
        f"R > 1 at {c['ratios_above_one'][0]} of {c['ratios_above_one'][1]} batch sizes; "
        f"R changes by {trend} per batch doubling; mean R {num(c['mean_ratio'], '.3f')}",
        f"tokens-vs-steps: Muon matches or beats {matched} of {front} points of AdamW's Pareto front",
        f"claim (R > 1 and not shrinking with B): {'holds' if c['holds'] else 'does not hold'} here",
    ]
    lines.append("R range: the R the evaluations bracketing each crossing allow, however the curves ran between them")
    lines += [f"note: {n}" for n in table["notes"]]
    return "\n".join(lines)


def _range(bounds: Sequence[float | None] | None) -> str:
    if bounds is None:
        return "-"
    lo, hi = ("?" if x is None else f"{x:.2f}" for x in bounds)
    return f"[{lo}, {hi}]"


# ============================================================================ figures


def plot_compare(table: Mapping[str, Any], outdir: str | Path) -> dict[str, str]:
    """Draw the study's figures from its table into `outdir`; returns name -> file name.

    Works from compare.json's content alone, so a report can redraw them anywhere.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for name, draw in (("ratio", _plot_ratio), ("tradeoff", _plot_tradeoff), ("curves", _plot_curves)):
        fig = draw(table)
        fig.savefig(outdir / FIGURES[name], dpi=110, bbox_inches="tight")
    return dict(FIGURES)


# matplotlib is imported inside the plotting functions: the CLI and the maths stay fast to import.
def _figure(ncols: int) -> Any:
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend state, safe in a notebook
    )

    return Figure(figsize=(5.2 * ncols, 4.0), layout="constrained")


def _batch_axis(ax: Any, batch_sizes: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    ax.minorticks_off()


def _plot_ratio(table: Mapping[str, Any]) -> Any:
    fig = _figure(1)
    ax = fig.add_subplot()
    measured = [r for r in table["ratios"] if r["ratio"] is not None]
    bs = [r["batch_size"] for r in table["ratios"]]
    lo, hi = (1 / (1 - s) for s in PAPER_TOKEN_SAVING)
    ax.axhspan(lo, hi, color="tab:green", alpha=0.15, label="paper: Muon needs 10-15% fewer tokens")
    ax.axhline(1.0, color="grey", ls="--", label="R = 1: no advantage")
    ax.plot([r["batch_size"] for r in measured], [r["ratio"] for r in measured], "o-", color="tab:blue",
            label="measured (bars: the range the bracketing evaluations allow)")
    for r in measured:
        lo, hi = (x if x is not None else r["ratio"] for x in (r["ratio_range"] or (None, None)))
        ax.vlines(r["batch_size"], lo, hi, color="tab:blue", alpha=0.4, lw=3)
    for r in measured:
        ax.annotate(f"{r['ratio']:.2f}", (r["batch_size"], r["ratio"]), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)
    _batch_axis(ax, bs)
    ax.set_xlabel("batch size B (sequences)")
    ax.set_ylabel("R(B) = T_AdamW / T_Muon")
    ax.set_title(f"tokens to reach val loss {table['target_loss']:.3f}, width {table['width']}", fontsize=10)
    ax.legend(fontsize=8)
    return fig


_COLOURS = {"muon": "tab:blue", "adamw": "tab:orange"}


def _plot_tradeoff(table: Mapping[str, Any]) -> Any:
    """Compute (tokens, FLOPs) against time (sequential steps) to reach the target, per optimizer:
    one point per batch size, Pareto-front points filled."""
    fig = _figure(2)
    panels = (("tokens_to_target", "tokens to target"),
              ("flops_to_target", "FLOPs to target (model + Newton-Schulz)"))
    for k, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        for optimizer in OPTIMIZERS:
            mine = [c for c in table["cells"] if c["optimizer"] == optimizer and c[key] is not None]
            if not mine:
                continue
            colour = _COLOURS[optimizer]
            xs, ys = [c["steps_to_target"] for c in mine], [c[key] for c in mine]
            front = set(pareto_front(list(zip(xs, ys))))
            ax.plot(xs, ys, "-", color=colour, alpha=0.5, label=optimizer)
            for i, c in enumerate(mine):
                ax.plot(xs[i], ys[i], "o", color=colour, mfc=colour if i in front else "white")
                ax.annotate(f"B={c['batch_size']}", (xs[i], ys[i]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequential steps to target (time)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8, title="filled: Pareto front", title_fontsize=7)
    fig.suptitle(f"compute-time trade-off to val loss {table['target_loss']:.3f}", fontsize=10)
    return fig


def _plot_curves(table: Mapping[str, Any]) -> Any:
    """Left: the best runs' validation curves and the target. Right: final loss against lr, the
    sweep each best lr was picked from."""
    from matplotlib import colormaps

    fig = _figure(2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    bs = sorted({c["batch_size"] for c in table["cells"]})
    cmap = colormaps["viridis"]
    colour = {b: cmap(0.85 * i / max(len(bs) - 1, 1)) for i, b in enumerate(bs)}
    style = {"muon": "-", "adamw": "--"}
    for c in table["cells"]:
        b, opt = c["batch_size"], c["optimizer"]
        label = f"{opt} B={b}"
        if c["curve"]["tokens"]:
            left.plot(c["curve"]["tokens"], c["curve"]["val_loss"], style[opt], color=colour[b], label=label)
        if c.get("tokens_to_target") is not None:
            left.plot(c["tokens_to_target"], table["target_loss"], "o", color=colour[b], ms=4)
        done = [r for r in c["lrs"] if r["final_loss"] is not None]
        right.plot([r["lr"] for r in done], [r["final_loss"] for r in done], style[opt], marker="o",
                   color=colour[b], ms=4, label=label)
        for r in c["lrs"]:
            if r["final_loss"] is None:  # diverged or failed: marked at the top edge
                right.plot(r["lr"], 1, "x", color=colour[b], transform=right.get_xaxis_transform())
    left.axhline(table["target_loss"], color="grey", ls=":", label="target")
    left.set_xscale("log")
    left.set_xlabel("tokens")
    left.set_ylabel("validation loss (best lr, seed mean)")
    left.legend(fontsize=7, ncol=2)
    right.set_xscale("log")
    lrs = sorted({r["lr"] for c in table["cells"] for r in c["lrs"]})
    right.set_xticks(lrs, [f"{lr:.3g}" for lr in lrs], rotation=45, fontsize=7)
    right.minorticks_off()
    right.set_xlabel("peak lr")
    right.set_ylabel("final validation loss (x: diverged/failed)")
    right.legend(fontsize=7, ncol=2)
    return fig
