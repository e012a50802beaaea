"""A dispatched trial's outcome as its ledger record: shared by every driver that runs trials
through the Dispatcher (the sweep controller, the compare study)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from telescope.core.contract import TrialResult
from telescope.core.trainable import failed_result
from telescope.run.dispatch import Outcome
from telescope.store.records import TrialRecord, trial_record


def outcome_record(trial_id: str, outcome: Outcome, *, axes: Mapping[str, Any],
                   columns: Mapping[str, Any], metrics: Sequence[str] = ()) -> TrialRecord:
    """The ledger record of one dispatched trial: its result, or a failed one if it raised, hung
    past its time limit or lost its worker too often, and where it ran. `metrics`: the extra
    columns a user's trainable declared, NaN in a failed row."""
    result = outcome.value if outcome.ok else _failed(outcome, metrics)
    where = {"node": _where(outcome), "gpu_ids": ",".join(outcome.gpu_ids), "attempt": max(outcome.attempts, 1)}
    return trial_record(trial_id, result, axes=axes, columns={**columns, **where})


def _where(outcome: Outcome) -> str:
    """The ledger's `node`: "hostname (ip) node <Ray node id>". Several Ray nodes can share one
    host and IP (pods on a machine, a local test cluster); the id tells them apart and joins the
    row with Ray's own logs. "" if the trial was never seen to start."""
    if not outcome.node_id:
        return outcome.node
    return f"{outcome.node} node {outcome.node_id}".strip()


def _failed(outcome: Outcome, metrics: Sequence[str]) -> TrialResult:
    """A trial that raised, hung past its time limit, or lost its worker too often."""
    return failed_result(outcome.error, metrics=metrics, wall_time_s=outcome.wall_time_s)
