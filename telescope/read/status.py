"""`telescope status`: where a sweep stands, derived from its directory alone.

Finished levels come from the replay (telescope.state), the level in progress from its pending
step, and the levels not reached yet from the plan (their grids depend on optima not known yet).
Every loss is the mean over seeds with the seed spread beside it, every optimum carries its
uncertainty and is printed to the digits that allows, and an axis whose effect the level cannot
tell from noise says so (telescope.core.noise). Each level says how many workers its trials run on
(the spec's resources.workers) and, once recorded, on how many distinct nodes; `trials` lists every
recorded trial's status, workers and nodes (a ledger from before multi-worker trials reads as one
worker each, its nodes unknown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from telescope.core.noise import best_point, level_noise
from telescope.core.numbers import json_safe
from telescope.state import sweep_state
from telescope.store.lock import lock_holder
from telescope.store.records import total_flops
from telescope.spec.plan import plan
from telescope.state import row_loss


def sweep_status(out: str | Path) -> dict[str, Any]:
    spec, ledger, state = sweep_state(out)
    trials = ledger.trials()
    planned = plan(spec)
    levels: list[dict[str, Any]] = []
    for lp in planned.levels:
        rows = trials[trials["level"] == lp.level] if len(trials) else trials
        counts = rows["status"].value_counts().to_dict() if len(rows) else {}
        entry: dict[str, Any] = {
            "level": lp.level, "width": lp.width, "sampler": lp.sampler, "grid": lp.grid,
            "planned_trials": lp.trials, "recorded": int(len(rows)),
            "completed": int(counts.get("completed", 0)), "diverged": int(counts.get("diverged", 0)),
            "failed": int(counts.get("failed", 0)),
            **_best(rows, spec.axis_names, len(spec.seeds)),
            "flops": total_flops(rows),
            "workers": spec.resources[lp.level].workers,
            "nodes": _nodes(rows),
            "trials": [{"trial_id": r["trial_id"], "status": r["status"], "workers": int(r["workers"]),
                        "nodes": None if pd.isna(r["nodes"]) else int(r["nodes"])}
                       for r in rows[["trial_id", "status", "workers", "nodes"]].to_dict("records")] if len(rows) else [],
            "bracketed": None,  # known once the level is done
        }
        if lp.level < len(state.levels):
            done = state.levels[lp.level]
            noise = level_noise(done)
            entry |= {"state": "done", "grid": done.grid.shape, "rings": done.grid.widened,
                      "optimum": dict(done.optimum.point), "optimum_loss": done.optimum.loss,
                      **noise.loss.to_dict(), "noise": noise.noise.to_dict(), "same_best": json_safe(noise.same_best),
                      "optimum_uncertainty": {name: a.to_dict() for name, a in noise.axes.items()},
                      "bracketed": done.bracketed, "on_edge": done.unbracketed, "notes": list(done.notes)}
        elif state.pending is not None and state.pending.level == lp.level:
            p = state.pending
            entry |= {"state": "running" if lock_holder(out) else "waiting", "grid": p.step.grid.shape,
                      "trials": p.budget_points * len(spec.seeds)
                      if not spec.sampler(p.level).fixed_points else len(p.recorded) + len(p.missing)}
        else:
            entry["state"] = "not started"
        levels.append(entry)
    final = levels[len(state.levels) - 1] if state.levels else None
    return {
        "sweep": spec.name, "directory": str(out), "complete": state.complete, "stopped": state.stopped,
        "controller": lock_holder(out),
        "levels": levels,
        "trials_recorded": int(len(trials)),
        "flops_spent": total_flops(trials),
        "wall_time_s": float(trials["wall_time_s"].sum()) if len(trials) else 0.0,
        "optimum": dict(state.optimum.point) if state.optimum else None,
        "optimum_display": {n: a["display"] for n, a in final["optimum_uncertainty"].items()} if final else None,
        "optimum_width": state.levels[-1].width if state.levels else None,
    }


def _nodes(rows: pd.DataFrame) -> list[int]:
    """The distinct node counts the level's recorded trials ran on ([2]: every trial on two nodes)."""
    if not len(rows):
        return []
    return sorted(int(n) for n in rows["nodes"].dropna().unique())


def _best(rows: pd.DataFrame, axes: tuple[str, ...], n_seeds: int) -> dict[str, Any]:
    """The level's best point so far: the lowest mean loss over seeds among points with every seed
    recorded (a diverged or failed seed makes its point infinitely bad), with the seed spread."""
    losses: dict[tuple[float, ...], list[float]] = {}
    for r in rows.to_dict("records"):
        losses.setdefault(tuple(float(r[a]) for a in axes), []).append(row_loss(r))
    found = best_point(losses, n_seeds)
    if found is None:
        return {"best_loss": None, "best_loss_std": None, "best_loss_text": "-", "best_point": None}
    key, loss = found
    return {"best_loss": loss.mean, "best_loss_std": json_safe(loss.std), "best_loss_text": loss.text(),
            "best_point": dict(zip(axes, key))}


def _placement(level: dict[str, Any]) -> str:
    """"  2 workers on 2 nodes" for a level of multi-worker trials: the spec's workers (and any
    other count its recorded trials ran with) and the nodes its recorded trials used."""
    used = sorted({t["workers"] for t in level["trials"]} | {level["workers"]})
    if used == [1]:
        return ""
    text = f"  {'/'.join(map(str, used))} workers"
    nodes = level["nodes"]
    if nodes:
        span = str(nodes[0]) if len(nodes) == 1 else f"{nodes[0]}-{nodes[-1]}"
        text += f" on {span} node{'s' if nodes[-1] != 1 else ''}"
    return text


def format_status(status: dict[str, Any]) -> str:
    head = ("complete" if status["complete"] else "in progress" if status["controller"]
            else "stopped" if status["stopped"] else "interrupted")
    lines = [f"sweep {status['sweep']!r} in {status['directory']}: {head}"]
    if status["stopped"]:
        lines.append(f"  stopped: {status['stopped']}")
    if status["controller"]:
        lines.append(f"  controller: {status['controller']}")
    for lv in status["levels"]:
        lines.append(
            f"  level {lv['level']}  width {lv['width']:>5}  {lv['grid']:>5} {lv['sampler']:<6} {lv['state']:<11} "
            f"{lv['recorded']:>4} recorded ({lv['completed']} completed, {lv['diverged']} diverged, "
            f"{lv['failed']} failed)  best {lv['best_loss_text']}{_placement(lv)}"
        )
        if "optimum" in lv:
            point = ", ".join(f"{name}={a['text']}" for name, a in lv["optimum_uncertainty"].items())
            rings = f"{lv['rings']} ring{'s' if lv['rings'] != 1 else ''}; " if lv["rings"] else ""
            where = "bracketed" if lv["bracketed"] else "NOT bracketed: " + ", ".join(
                f"{name} on the {edge} edge" for name, edge in lv["on_edge"].items())
            lines.append(f"           optimum {point} ({rings}{where})")
            lines.append(f"           {lv['noise']['text']}")
            lines += [f"           {a['note']}" for a in lv["optimum_uncertainty"].values() if a["note"]]
    lines.append(f"  {status['trials_recorded']} trials, {status['flops_spent']:.3g} FLOPs, "
                 f"{status['wall_time_s']:.0f} s of trial time")
    if status["optimum"]:
        point = ", ".join(f"{name}={v}" for name, v in status["optimum_display"].items())
        lines.append(f"  current optimum (width {status['optimum_width']}): {point}")
    return "\n".join(lines)
