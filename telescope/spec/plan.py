"""What a sweep will run and what it will cost, before it runs: `plan(spec)` and `format_plan`.

Costs are FLOPs (telescope.core.flops), so they compare widths and grids fairly on any hardware:
model FLOPs (6 per matmul parameter per token plus attention) plus, with Muon, its Newton-Schulz
FLOPs (paid per optimizer step, ~width^3, so their share grows with width and shrinks with the
batch). Vocabulary: the spec's vocab_size, else 256 (byte-level text).

Brute force is the alternative telescoping replaces: a whole grid run at one width, priced at
the calibration width (the same answer without telescoping) and at the target width (tuning the
final model directly). Two grids are priced:
  - "base resolution": as many points as the base grid, i.e. the base grid run at that width.
    This is the comparison the paper's "savings typically higher than 50%" refers to.
  - "finest spacing": the last level's spacing over the base grid's range, i.e. the resolution
    telescoping ends with, reached by brute force.

Memory per worker (telescope.core.memory, for the built-in GPT only): each level's trial at the
spec's micro_batch_size (unset: each worker's whole share of the batch in one pass), against an
assumed device memory (`telescope plan --gpu-memory`, default DEFAULT_GPU_MEMORY_GB); where it
does not fit, the largest micro-batch that does, or that even one row per pass needs more memory
per worker than the device has. A user's trainable has its own model, so no estimate is made.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from telescope.core import memory
from telescope.core.contract import AUTO_MICRO_BATCH, BYTE_VOCAB
from telescope.core.flops import optimizer_flops, training_flops
from telescope.spec.samplers import sampler_info
from telescope.spec.sweep import SweepSpec
from telescope.core.rule import count_schedule

DEFAULT_GPU_MEMORY_GB = memory.DEFAULT_GPU_MEMORY_GB


@dataclass(frozen=True)
class LevelPlan:
    level: int
    width: int
    counts: tuple[int, ...]  # points per axis
    grid: str  # "5x5"
    sampler: str
    sampler_does: str  # what the sampler will actually do with the level's budget
    points: int
    trials: int  # points x seeds
    flops_per_trial: float  # model + optimizer
    optimizer_flops_per_trial: float  # Muon's Newton-Schulz part of it (0 for AdamW)
    flops: float
    share: float  # of the sweep's planned total
    workers: int = 1  # processes per trial (resources.workers)
    # telescope.core.memory's estimate per worker, in bytes, at `micro_batch` rows per pass (None for
    # a user's trainable); `fits` the plan's device memory (None on cpu, where it is not GPU memory);
    # `fitting_micro_batch`: the largest micro-batch that fits (None when not even 1 does)
    micro_batch: int | None = None
    memory_per_worker: float | None = None
    fits: bool | None = None
    fitting_micro_batch: int | None = None


@dataclass(frozen=True)
class BruteForce:
    grid_kind: str  # "base resolution" | "finest spacing"
    width: int
    counts: tuple[int, ...]
    grid: str
    trials: int
    flops: float
    savings: float  # 1 - telescoping's planned FLOPs / these


@dataclass(frozen=True)
class Plan:
    name: str
    axes: tuple[str, ...]
    seeds: int
    vocab_size: int
    levels: tuple[LevelPlan, ...]
    trials: int
    flops: float  # model + optimizer
    optimizer_flops: float  # Muon's Newton-Schulz part of it
    max_widenings: int  # widening can't be predicted: it depends on where the optimum lands
    widening_trials_max: int  # at most this many more trials at level 0
    widening_flops_max: float
    max_shifts: int  # rings per later level, as unpredictable as widening
    shift_trials_max: int  # at most this many more trials over all later levels
    shift_flops_max: float
    centre: str  # "drift" or "previous": where later levels are centred
    brute_force: tuple[BruteForce, ...]
    target_width: int
    final_run_flops: float  # one training run at target_width with the spec's steps
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB  # the device memory the levels' estimates are held to
    memory_device: str | None = None  # what the estimates assume: "cuda" (bf16), "cpu" (fp32), None: none made
    # a user's trainable is priced as the built-in GPT of the spec's [model] shape: its own FLOPs are its own
    flops_of_builtin_shape: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan(spec: SweepSpec, gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB) -> Plan:
    fixed = spec.fixed
    vocab = fixed.vocab_size or BYTE_VOCAB
    seeds = len(spec.seeds)

    def ns_flops(width: int) -> float:
        return optimizer_flops(fixed.optimizer, width, fixed.depth, fixed.steps, fixed.mlp_ratio)

    def trial_flops(width: int) -> float:
        model = training_flops(width, fixed.depth, fixed.seq_len, vocab, fixed.batch_size, fixed.steps, fixed.mlp_ratio)
        return model + ns_flops(width)

    schedule = count_schedule([a.points for a in spec.axes], spec.n_levels, spec.min_points)
    rows = []
    for level, (width, counts) in enumerate(zip(spec.widths, schedule)):
        trials = math.prod(counts) * seeds
        rows.append((level, width, counts, trials, trial_flops(width)))
    total = sum(trials * per for *_, trials, per in rows)
    levels = tuple(
        LevelPlan(level, width, counts, _shape(counts), spec.samplers[level],
                  spec.sampler(level).describe(math.prod(counts), len(spec.axes)), math.prod(counts), trials,
                  per, ns_flops(width), trials * per, trials * per / total)
        for level, width, counts, trials, per in rows
    )
    memory_device = None
    if spec.trainable.builtin:
        memory_device = "cpu" if fixed.device == "cpu" else "cuda"
        levels = tuple(_with_memory(lv, spec, vocab, memory_device, gpu_memory_gb) for lv in levels)

    base = schedule[0]
    # The worst case: every ring grows every axis by one point (a grid level only: a sampler
    # level's optimum is its best sample, and it never grows).
    ring_trials = [
        (math.prod(c + (spec.max_widenings if level == 0 else spec.max_shifts) for c in counts)
         - math.prod(counts)) * seeds if spec.sampler(level).fixed_points else 0
        for level, counts in enumerate(schedule)
    ]
    widening_trials = ring_trials[0]
    shift_trials = sum(ring_trials[1:])
    shift_flops = sum(n * trial_flops(w) for n, w in zip(ring_trials[1:], spec.widths[1:]))
    finest = tuple((c - 1) * 2 ** (spec.n_levels - 1) + 1 if c > 1 else 1 for c in base)
    brute = tuple(
        BruteForce(kind, width, counts, _shape(counts), math.prod(counts) * seeds,
                   math.prod(counts) * seeds * trial_flops(width),
                   1 - total / (math.prod(counts) * seeds * trial_flops(width)))
        for width in (spec.calibration_width, spec.target_width)
        for kind, counts in (("base resolution", base), ("finest spacing", finest))
    )
    return Plan(
        flops_of_builtin_shape=not spec.trainable.builtin,
        name=spec.name,
        axes=spec.axis_names,
        seeds=seeds,
        vocab_size=vocab,
        levels=levels,
        trials=sum(lv.trials for lv in levels),
        flops=total,
        optimizer_flops=sum(lv.trials * lv.optimizer_flops_per_trial for lv in levels),
        max_widenings=spec.max_widenings,
        widening_trials_max=widening_trials,
        widening_flops_max=widening_trials * trial_flops(spec.base_width),
        max_shifts=spec.max_shifts,
        shift_trials_max=shift_trials,
        shift_flops_max=shift_flops,
        centre=spec.centre,
        brute_force=brute,
        target_width=spec.target_width,
        final_run_flops=trial_flops(spec.target_width),
        gpu_memory_gb=gpu_memory_gb,
        memory_device=memory_device,
    )


def _with_memory(lv: LevelPlan, spec: SweepSpec, vocab: int, device: str, gpu_memory_gb: float) -> LevelPlan:
    """`lv` with its trial's memory per worker; a batch the workers cannot share is a ConfigError."""
    workers = spec.resources[lv.level].workers
    cfg = spec.fixed.replace(width=lv.width)
    per_worker, micro = cfg.micro_batches(workers)
    fitting = fits = None
    if device == "cuda":
        fitting = memory.fitting_micro_batch(cfg, vocab, gpu_memory_gb * memory.GB, workers=workers, device=device)
        if cfg.micro_batch_size == AUTO_MICRO_BATCH:  # what the engine will pick on such a GPU
            micro = fitting or 1
    micro = micro or per_worker
    need = memory.estimate(cfg, vocab, micro_batch=micro, workers=workers, device=device).total
    if device == "cuda":
        fits = need <= gpu_memory_gb * memory.GB * (1 - memory.HEADROOM)
    return dataclasses.replace(lv, workers=workers, micro_batch=micro, memory_per_worker=need, fits=fits,
                               fitting_micro_batch=fitting)


def format_bytes(n: float) -> str:
    """Bytes in decimal units, three significant digits: "52.7 GB", "312 MB"."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _memory_lines(p: Plan) -> list[str]:
    if p.memory_device is None:
        return ["", "memory: no estimate for your own trainable (telescope.core.memory models the built-in GPT's "
                    "tensors only)"]
    gb = f"{p.gpu_memory_gb:g} GB"
    if p.memory_device == "cpu":
        lines = ["", "memory per worker (estimate for the built-in GPT in fp32 on the CPU; not held to a GPU's):"]
    else:
        lines = ["", f"memory per worker (estimate for the built-in GPT, bf16 on a GPU; assumed {gb} per GPU, "
                     f"--gpu-memory to change):"]
    for lv in p.levels:
        rows = f"{lv.micro_batch} row{'s' if lv.micro_batch > 1 else ''} per pass"
        workers = f", {lv.workers} workers" if lv.workers > 1 else ""
        line = f"  level {lv.level}  width {lv.width:>5}: {format_bytes(lv.memory_per_worker):>8} ({rows}{workers})"
        if lv.fits is False:
            if lv.fitting_micro_batch is None:
                line += f": more than {gb}, and so is 1 row per pass: needs more workers or more memory per GPU"
            else:
                line += f': more than {gb}; micro_batch_size = {lv.fitting_micro_batch} (or "auto") fits'
        lines.append(line)
    return lines


def _shape(counts: tuple[int, ...]) -> str:
    return "x".join(str(c) for c in counts)


def _flops(x: float) -> str:
    return f"{x:.2e}".replace("e+", "e")


def savings_phrase(savings: float) -> str:
    """Telescoping's FLOPs against a brute-force grid's, `savings` = 1 - telescoping / brute force,
    in words that stay true at both extremes: a saving rounded to 100% or printed negative would not."""
    if savings > 0.999:
        return "telescoping costs < 0.1% of that"
    if savings < -0.0005:
        return f"telescoping costs {-savings:.1%} more than that"
    if savings < 0.0005:
        return "telescoping costs as much"
    return f"telescoping saves {savings:.1%}"


def format_plan(p: Plan) -> str:
    seeds = f"{p.seeds} seed{'s' if p.seeds > 1 else ''} per point"
    muon = p.optimizer_flops > 0
    what = "FLOPs = model + Muon's Newton-Schulz" if muon else "model FLOPs"
    lines = [
        f"sweep {p.name}: {' x '.join(p.axes)}, {seeds}, {what} (vocab {p.vocab_size})",
        *(["  priced as the built-in GPT of the spec's [model] shape: your trainable's own FLOPs may differ"]
          if p.flops_of_builtin_shape else []),
        "",
        f"{'level':>5}  {'width':>6}  {'grid':>7}  {'sampler':>7}  {'trials':>6}  "
        f"{'FLOPs/trial':>11}  {'FLOPs':>9}  {'share':>5}" + (f"  {'NS part':>7}" if muon else ""),
    ]
    for lv in p.levels:
        lines.append(
            f"{lv.level:>5}  {lv.width:>6}  {lv.grid:>7}  {lv.sampler:>7}  {lv.trials:>6}  "
            f"{_flops(lv.flops_per_trial):>11}  {_flops(lv.flops):>9}  {lv.share:>5.0%}"
            + (f"  {lv.optimizer_flops_per_trial / lv.flops_per_trial:>7.1%}" if muon else "")
        )
    lines.append(f"{'total':>5}  {'':>6}  {'':>7}  {'':>7}  {p.trials:>6}  {'':>11}  {_flops(p.flops):>9}"
                 + (f"  {'':>5}  {p.optimizer_flops / p.flops:>7.1%}" if muon else ""))
    if muon:
        lines.append("  NS part: Muon's Newton-Schulz share, paid per optimizer step (~width^3) whatever the batch")
    if not all(sampler_info(lv.sampler).fixed_points for lv in p.levels):
        lines += ["", "what each level's sampler does:"]
        lines += [f"  level {lv.level}: {lv.sampler} - {lv.sampler_does}" for lv in p.levels]
    if p.widening_trials_max:
        lines.append(
            f"+ up to {p.max_widenings} widening ring{'s' if p.max_widenings > 1 else ''} at level 0 if the "
            f"optimum lands on an edge: at most {p.widening_trials_max} more trials, "
            f"{_flops(p.widening_flops_max)} FLOPs"
        )
    if p.shift_trials_max:
        lines.append(
            f"+ up to {p.max_shifts} ring{'s' if p.max_shifts > 1 else ''} at each later level if its optimum "
            f"lands on an edge: at most {p.shift_trials_max} more trials, {_flops(p.shift_flops_max)} FLOPs"
        )
    if len(p.levels) > 2:
        lines.append(
            "  levels from 2 on are centred on the fitted drift of the optimum, as far as the levels measure it "
            "(at most one spacing from the previous optimum)" if p.centre == "drift" else
            '  every later level is centred on the previous optimum (centre = "previous", the paper\'s rule)'
        )
    lines += ["", "against brute force (one grid run entirely at one width):"]
    for b in p.brute_force:
        lines.append(
            f"  {b.grid_kind:<15} {b.grid:>7} at width {b.width:>5}: {b.trials:>6} trials  "
            f"{_flops(b.flops):>9} FLOPs  {savings_phrase(b.savings)}"
        )
    lines += [
        "  (base resolution: the base grid's points; "
        "finest spacing: the last level's spacing over the base range)",
        "",
        f"one training run at the target width {p.target_width} with the spec's steps: "
        f"{_flops(p.final_run_flops)} FLOPs; the sweep costs {p.flops / p.final_run_flops:.2g}x that",
    ]
    return "\n".join(lines + _memory_lines(p))
