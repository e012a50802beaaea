"""`telescope verify`: check a finished sweep's export at a width of the user's choosing.

A transfer is trusted only where it was measured. Before a big run at width W, verify trains a
small 1-D scan there: `points` values of one axis (lr by default) centred on the exported value,
equally spaced in the axis's scale, every other axis at its exported value, each with `seeds`
seeds. The trials run through the sweep's own dispatcher into a ledger of their own,

    DIR/verify/<W>/        a telescope directory of kind "verify" (spec.toml: the scan last run)
    DIR/verify/<W>/verify.json, verify.png

and their ids are content-addressed, so running verify again is a no-op for recorded trials
(a scan with more points or seeds runs only the new ones).

The verdict: the exported value's mean loss against the scan's best mean loss. They are within
noise when |difference| <= 2 * sigma * sqrt(2 / n), twice the standard error of the difference of
two independent n-seed means, with sigma the seed-to-seed std pooled over the scan's points. With
one seed there is no noise estimate, and the verdict says so instead of guessing.

This module plans the scan and judges it (no Ray, no torch: a bad option fails before either
loads); telescope.run.verify runs it.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import tomli_w

from telescope.core.numbers import format_point, json_safe
from telescope.core.rule import Axis
from telescope.errors import ConfigError
from telescope.read.export import export
from telescope.spec.resources import Resources
from telescope.state import PlannedTrial, plan_trial, row_loss, sweep_state
from telescope.store.directory import directory_kind, load_sweep_dir
from telescope.store.files import atomic_write

VERIFY_DIR = "verify"
RESULT_FILE = "verify.json"
FIGURE_FILE = "verify.png"
LEVEL = 0  # one width, one scan: the ledger's `level` column and the trial ids' "L0"
DEFAULT_POINTS = 5
DEFAULT_SEEDS = (0, 1)
# The default step between scan points, in calibration-level grid spacings: the last level's
# spacing is what the sweep could resolve, so twice it reaches past that level's grid.
SPACINGS_PER_STEP = 2.0


@dataclass(frozen=True)
class ScanPlan:
    """One verify scan: what it trains, where it records, and how its trials run."""

    kind: ClassVar[str] = "verify"  # the stored kind of its directory
    sweep_dir: Path
    directory: Path  # DIR/verify/<width>
    name: str  # the sweep's
    fingerprint: str  # of the sweep and the width: a scan's ledger holds one sweep's trials at one width
    width: int
    axis: Axis
    exported: dict[str, float]  # the whole exported point (base values)
    values: tuple[float, ...]  # the scanned values, low to high; the middle one is exported[axis]
    seeds: tuple[int, ...]
    span: float  # how far the scan reaches either side: a factor (log axis) or a distance (linear)
    trials: tuple[PlannedTrial, ...]  # values x seeds
    resources: Resources
    time_limit_s: float | None
    max_retries: int

    @property
    def text(self) -> str:
        """The scan's settings as TOML: its directory's spec.toml."""
        return tomli_w.dumps({
            "kind": self.kind, "sweep": self.name, "width": self.width, "axis": self.axis.name,
            "scale": self.axis.scale, "values": list(self.values), "seeds": list(self.seeds), "span": self.span,
            "exported": dict(self.exported),
        })


def verify_dir(sweep_dir: str | Path, width: int) -> Path:
    return Path(sweep_dir) / VERIFY_DIR / str(width)


def plan_scan(sweep_dir: str | Path, width: int, *, axis: str | None = None, points: int = DEFAULT_POINTS,
              seeds: Sequence[int] = DEFAULT_SEEDS, span: float | None = None) -> ScanPlan:
    """The scan around the export of the finished sweep in `sweep_dir`, at `width`.

    `span`: how far the scan reaches either side of the exported value, in the axis's own terms:
    a factor > 1 on a log axis (lr / span .. lr * span), a distance > 0 on a linear one. Default:
    SPACINGS_PER_STEP of the calibration level's grid spacings between neighbouring points.
    Every bad option is a ConfigError naming it.
    """
    sweep_dir = Path(sweep_dir)
    spec, _, state = sweep_state(sweep_dir)
    if not state.complete:
        why = f"it stopped: {state.stopped}" if state.stopped else (
            f"{len(state.levels)} of {spec.n_levels} levels done; finish it with `telescope resume {sweep_dir}`")
        raise ConfigError(str(sweep_dir), f"is not a finished sweep ({why}), so it has no export to verify")
    if not isinstance(width, int) or isinstance(width, bool) or width < spec.base_width:
        raise ConfigError("width", f"must be a whole number >= the sweep's base_width ({spec.base_width}); "
                                   f"got {width!r}")
    head_dim = spec.fixed.head_dim
    if width % head_dim:
        below = width // head_dim * head_dim
        raise ConfigError("width", f"must be a multiple of head_dim ({head_dim}); got {width}: pick {below} or "
                                   f"{below + head_dim}")
    axes = {a.name: a for a in spec.axes}
    name = axis if axis is not None else ("lr" if "lr" in axes else spec.axis_names[0])
    if name not in axes:
        raise ConfigError("axis", f"must be one of the sweep's axes ({', '.join(axes)}); got {name!r}")
    scan_axis = axes[name]
    if not isinstance(points, int) or isinstance(points, bool) or points < 3 or points % 2 == 0:
        raise ConfigError("points", f"must be an odd whole number >= 3, so the exported value is the middle "
                                    f"point; got {points!r}")
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError("seeds", f"must be distinct whole numbers >= 0 (at least one); got {list(seeds)!r}")
    half = points // 2
    log = scan_axis.scale == "log"
    if span is None:
        reach = SPACINGS_PER_STEP * state.levels[-1].grid.spacing(name) * half
        span = math.exp(reach) if log else reach
    elif not (isinstance(span, (int, float)) and math.isfinite(span) and span > (1 if log else 0)):
        what = f"a factor > 1 ({name} / span .. {name} * span)" if log else "a distance > 0"
        raise ConfigError("span", f"must be {what} on the {scan_axis.scale} axis {name}; got {span!r}")
    reach = math.log(span) if log else float(span)

    exported = {k: float(v) for k, v in export(sweep_dir, width)["hyperparameters"].items()}
    centre = scan_axis.to_scale(exported[name])
    # The middle value is the exported one itself, not exp(log(x)) with its float dust.
    values = tuple(exported[name] if k == 0 else scan_axis.from_scale(centre + k * reach / half)
                   for k in range(-half, half + 1))
    lo, hi = scan_axis.bounds
    outside = [v for v in values if not lo <= v <= hi]
    if outside:
        raise ConfigError("span", f"the scan would reach {name} = {outside[0]:.4g}, outside its valid range "
                                  f"[{lo:g}, {hi:g}]; use a smaller span")
    trials = tuple(plan_trial(spec, LEVEL, width, {**exported, name: v}, s) for v in values for s in seeds)

    level = spec.n_levels - 1  # the calibration level's resources: the nearest to what width W needs
    directory = verify_dir(sweep_dir, width)
    fingerprint = hashlib.sha256(json.dumps([spec.fingerprint(), width]).encode()).hexdigest()[:16]
    _refuse_other_scan(directory, fingerprint)
    return ScanPlan(sweep_dir, directory, spec.name, fingerprint, width, scan_axis, exported, values, seeds,
                    float(span), trials, spec.resources[level], spec.time_limit_s, spec.max_retries)


def _refuse_other_scan(directory: Path, fingerprint: str) -> None:
    """Say plainly what an unusable existing scan directory is (open_sweep_dir's refusals speak
    of sweeps and --out)."""
    kind = directory_kind(directory)
    if kind is None:
        return
    if kind != ScanPlan.kind:
        raise ConfigError(str(directory), f"is a telescope {kind} directory, not a verify scan's; move it away")
    if load_sweep_dir(directory, kind=ScanPlan.kind)[2]["spec_fingerprint"] != fingerprint:
        raise ConfigError(str(directory), "holds a scan of another sweep (its directory was run again since); "
                                          "delete it to verify this sweep")


def judge(plan: ScanPlan, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The verdict on `plan`'s scan from its ledger's rows (trial_id -> row): verify.json's content.

    A point's mean is over all its seeds, and only when every seed completed (a diverged or failed
    seed leaves it without one); sigma pools the seed variances of the points that have a mean."""
    name, n = plan.axis.name, len(plan.seeds)
    middle = len(plan.values) // 2
    by_value: list[list[PlannedTrial]] = [[] for _ in plan.values]
    for i, t in enumerate(plan.trials):
        by_value[i // n].append(t)
    points = []
    for i, (value, trials) in enumerate(zip(plan.values, by_value)):
        found = [rows.get(t.trial_id) for t in trials]
        losses = [row_loss(r) if r is not None else math.inf for r in found]
        complete = all(math.isfinite(v) for v in losses)
        points.append({
            "value": value, "exported": i == middle,
            "losses": [v if math.isfinite(v) else None for v in losses],
            "statuses": [str(r["status"]) if r is not None else "missing" for r in found],
            "mean": statistics.fmean(losses) if complete else None,
            "std": statistics.stdev(losses) if complete and n > 1 else None,
        })
    measured = [p for p in points if p["mean"] is not None]
    spread = [p["std"] for p in measured if p["std"] is not None]
    sigma = math.sqrt(statistics.fmean([s * s for s in spread])) if spread else None
    tolerance = 2 * sigma * math.sqrt(2 / n) if sigma is not None else None
    best = min(measured, key=lambda p: p["mean"]) if measured else None
    mine = points[middle]
    difference = mine["mean"] - best["mean"] if best is not None and mine["mean"] is not None else None
    if difference is None:
        within = False  # the exported value did not even finish at this width
    else:
        within = None if tolerance is None else difference <= tolerance
    doc = {
        "sweep": plan.name, "sweep_dir": str(plan.sweep_dir), "width": plan.width, "axis": name,
        "scale": plan.axis.scale, "exported": dict(plan.exported), "exported_value": plan.exported[name],
        "span": plan.span, "seeds": list(plan.seeds), "n_seeds": n, "points": points,
        "best": {"value": best["value"], "mean": best["mean"]} if best is not None else None,
        "exported_mean": mine["mean"], "difference": difference,
        "sigma": sigma, "sigma_points": len(spread), "tolerance": tolerance, "within_noise": within,
        "best_on_edge": best is not None and best["value"] in (plan.values[0], plan.values[-1]),
    }
    doc["verdict"] = _verdict(doc)
    return doc


def _verdict(doc: Mapping[str, Any]) -> str:
    """One line: within noise or not, and why; or why there is no verdict."""
    name, width = doc["axis"], doc["width"]
    mine = f"the exported {name} = {doc['exported_value']:.4g}"
    if doc["difference"] is None:
        bad = next(p for p in doc["points"] if p["exported"])["statuses"]
        return (f"NOT verified: {mine} did not finish at width {width} ({', '.join(bad)}); the transfer does not "
                "hold there")
    best = doc["best"]
    gap = ("is the scan's best" if doc["difference"] == 0
           else f"is {doc['difference']:.4f} above the scan's best ({name} = {best['value']:.4g})")
    edge = ("; the best is on the scan's edge, so the optimum may lie beyond it (a larger span looks further)"
            if doc["best_on_edge"] else "")
    if doc["within_noise"] is None:
        return (f"no noise estimate: with one seed per point there is no seed-to-seed spread to judge by; {mine} "
                f"{gap}; run with 2 or more seeds for a verdict{edge}")
    noise = (f"the noise 2*sigma*sqrt(2/n) = {doc['tolerance']:.4f} (sigma {doc['sigma']:.4f}, the seed std "
             f"pooled over {doc['sigma_points']} points; n = {doc['n_seeds']} seeds)")
    if doc["within_noise"]:
        return f"within noise: {mine} {gap}, within {noise}{edge}"
    return (f"NOT within noise: {mine} {gap}, beyond {noise}: at width {width} the optimum has moved; try "
            f"`telescope export --extrapolate` or calibrate nearer width {width}{edge}")


def format_verify(doc: Mapping[str, Any]) -> str:
    """The scan as a short table (mean and std over seeds per value, * the exported one) and the verdict."""
    name, seeds = doc["axis"], doc["seeds"]
    held = {k: v for k, v in doc["exported"].items() if k != name}
    lines = [f"verify {doc['sweep']!r} at width {doc['width']}: {len(doc['points'])} values of {name} x "
             f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
             + (f", {format_point(held)} held at the export" if held else "")]
    lines.append(f"  {name:>10}  " + "".join(f"{f'seed {s}':>9}" for s in seeds) + f"{'mean':>9}{'std':>9}")

    def cell(value: float | None) -> str:
        return f"{value:>9.4f}" if value is not None else f"{'-':>9}"

    for p in doc["points"]:
        losses = "".join(cell(v) if v is not None else f"{st:>9}" for v, st in zip(p["losses"], p["statuses"]))
        lines.append(f"{'*' if p['exported'] else ' '} {p['value']:>10.4g}  {losses}{cell(p['mean'])}{cell(p['std'])}")
    lines.append("(* the exported value)")
    lines.append(f"verdict: {doc['verdict']}")
    return "\n".join(lines)


def write_result(plan: ScanPlan, doc: Mapping[str, Any]) -> Path:
    """verify.json in the scan's directory (strict JSON: non-finite numbers as null)."""
    path = plan.directory / RESULT_FILE
    atomic_write(path, json.dumps(json_safe(dict(doc)), indent=2) + "\n")
    return path


def plot_verify(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Loss against the scanned value: each seed, the mean with the seed std as error bars, the
    exported value and the best marked, and the band within noise of the best shaded."""
    # only here: the verdict itself needs no matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    path = Path(path)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    name, points = doc["axis"], doc["points"]
    measured = [p for p in points if p["mean"] is not None]
    for i, seed in enumerate(doc["seeds"]):
        xs = [p["value"] for p in points if p["losses"][i] is not None]
        ys = [p["losses"][i] for p in points if p["losses"][i] is not None]
        ax.scatter(xs, ys, s=14, color="0.6", zorder=2, label="each seed" if i == 0 else None)
    if measured:
        ax.errorbar([p["value"] for p in measured], [p["mean"] for p in measured],
                    yerr=[p["std"] or 0.0 for p in measured], fmt="o-", color="tab:blue", capsize=3, zorder=3,
                    label=f"mean ± seed std ({doc['n_seeds']} seed{'s' if doc['n_seeds'] != 1 else ''})")
    failed = [p["value"] for p in points if p["mean"] is None]
    if failed:
        top = max((v for p in points for v in p["losses"] if v is not None), default=1.0)
        ax.scatter(failed, [top] * len(failed), marker="x", color="tab:red", zorder=4,
                   label="a seed diverged or failed")
    best = doc["best"]
    if best is not None:
        ax.scatter([best["value"]], [best["mean"]], marker="*", s=160, color="gold", edgecolor="black", zorder=5,
                   label="best mean")
        if doc["tolerance"] is not None:
            ax.axhspan(best["mean"], best["mean"] + doc["tolerance"], color="tab:green", alpha=0.15, zorder=1,
                       label="within noise of the best")
    ax.axvline(doc["exported_value"], color="tab:orange", linestyle="--", zorder=1,
               label=f"exported {name} = {doc['exported_value']:.4g}")
    if doc["scale"] == "log":
        ax.set_xscale("log")
    # ticks at the scanned values, plainly written (a log axis would say 4x10^-2)
    ax.set_xticks([p["value"] for p in points], [f"{p['value']:.3g}" for p in points])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(f"{name} (base value; muP scales it per group)")
    ax.set_ylabel("final validation loss")
    verdict = ("within noise" if doc["within_noise"] else "no noise estimate" if doc["within_noise"] is None
               else "NOT within noise")
    ax.set_title(f"{doc['sweep']}: {name} at width {doc['width']}: {verdict}")
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
