"""A dispatched trial's outcome as its ledger record: shared by every driver that runs trials
through the Dispatcher (the sweep controller, the compare study)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from telescope.core.contract import TrialResult
from telescope.core.trainable import failed_result
from telescope.run.dispatch import Outcome
from telescope.run.distributed import RankZero
from telescope.store.records import TrialRecord, trial_record


def outcome_record(trial_id: str, outcome: Outcome, *, axes: Mapping[str, Any],
                   columns: Mapping[str, Any], metrics: Sequence[str] = (), workers: int = 1) -> TrialRecord:
    """The ledger record of one dispatched trial: its result, or a failed one if it raised, hung
    past its time limit or lost its worker too often, and where it ran. `metrics`: the extra
    columns a user's trainable declared, NaN in a failed row. `workers`: the processes the trial
    asked for; a multi-worker trial's row says where its rank 0 ran, how many distinct nodes its
    workers used and how often its worker group started (telescope.run.distributed)."""
    value = outcome.value if outcome.ok else None
    if isinstance(value, RankZero):
        return trial_record(trial_id, value.result, axes=axes, columns={**columns, **_where_ranks(outcome, value)})
    result = value if outcome.ok else _failed(outcome, metrics)
    where = {"node": _where(outcome.node, outcome.node_id), "gpu_ids": ",".join(outcome.gpu_ids),
             "attempt": max(outcome.attempts, 1), "workers": workers,
             "nodes": 1 if outcome.node_id else None}  # one task: one node (a command launching its ranks, too)
    return trial_record(trial_id, result, axes=axes, columns={**columns, **where})


def _where_ranks(outcome: Outcome, value: RankZero) -> dict[str, Any]:
    # Starts of the trial: the worker groups of the launch that finished, after every launch that
    # died with its node before (Ray retries the launcher task; each launch counts afresh).
    attempt = max(outcome.attempts, 1) - 1 + max(value.attempts, 1)
    if not value.ranks:  # the group failed before training: only the launcher's node is known
        return {"node": _where(outcome.node, outcome.node_id), "gpu_ids": "", "attempt": attempt,
                "workers": value.workers, "nodes": None}
    zero = value.ranks[0]
    return {"node": _where(zero.node, zero.node_id), "gpu_ids": ",".join(zero.gpu_ids),
            "attempt": attempt, "workers": value.workers, "nodes": value.nodes}


def _where(node: str, node_id: str) -> str:
    """The ledger's `node`: "hostname (ip) node <Ray node id>". Several Ray nodes can share one
    host and IP (pods on a machine, a local test cluster); the id tells them apart and joins the
    row with Ray's own logs. "" if the trial was never seen to start."""
    if not node_id:
        return node
    return f"{node} node {node_id}".strip()


def _failed(outcome: Outcome, metrics: Sequence[str]) -> TrialResult:
    """A trial that raised, hung past its time limit, or lost its worker too often."""
    return failed_result(outcome.error, metrics=metrics, wall_time_s=outcome.wall_time_s)
