"""A trial's ledger record: its result flattened into one typed row plus its loss curve.

The core columns have fixed types (CORE_SCHEMA), so that part files always concatenate; the
sweep's axes and any extra columns take their types from the first trials recorded.

Everything here is built by telescope's own drivers (the sweep controller, the compare study)
from their specs and their trials' results, so a record that breaks these rules is a bug:
ValueError or TypeError, with the offending column first ("level: must be a whole number ...").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from telescope.core.contract import TrialResult

STATUSES = ("completed", "diverged", "failed")

# The core columns every sweep has, with fixed types, so that part files always concatenate
# (an all-null column must never be typed `null` in one part and `string` in another).
CORE_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("level", pa.int64()),
    ("width", pa.int64()),
    ("seed", pa.int64()),
    ("status", pa.string()),
    ("final_loss", pa.float64()),  # last validation loss; NaN unless completed
    ("final_train_loss", pa.float64()),
    ("tokens", pa.int64()),
    ("flops", pa.float64()),  # model FLOPs (telescope.core.flops.training_flops)
    ("optimizer_flops", pa.float64()),  # Muon's Newton-Schulz FLOPs, 0 for AdamW; null in older parts
    ("wall_time_s", pa.float64()),
    ("steps_done", pa.int64()),
    ("n_params", pa.int64()),
    ("node", pa.string()),
    ("device", pa.string()),
    ("gpu_ids", pa.string()),  # comma-separated, "" on CPU
    ("error", pa.string()),  # null unless the trial failed or diverged
    ("point_id", pa.string()),  # the controller's grid-point id, if it has one
    ("sampler_trial", pa.int64()),  # the sampler's (e.g. Optuna's) trial number, if any
    ("attempt", pa.int64()),  # starts of the trial (of its worker group, for a multi-worker trial)
    ("workers", pa.int64()),  # processes that trained it (Ray Train workers); 1 for a one-worker trial
    ("nodes", pa.int64()),  # distinct nodes its workers ran on; null where unknown (it never trained)
    ("finished_at", pa.timestamp("us", tz="UTC")),
])
NULLABLE = frozenset({"error", "point_id", "sampler_trial", "nodes"})
# Core columns added after ledgers were first written, and what a part written before them reads
# there (`upgrade_schema`, `upgrade_table`, applied as each part is read), so older sweeps still
# read, resume and compact; every new row has them. Every trial before `workers` had one worker.
ADDED_COLUMNS: dict[str, Any] = {"optimizer_flops": None, "workers": 1, "nodes": None}
# What the caller must give in `columns`; every other core column has a default or comes from
# the TrialResult.
REQUIRED_COLUMNS = ("level", "width", "seed")
CURVE_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("step", pa.int64()),
    ("train_loss", pa.float64()),  # NaN where not measured
    ("val_loss", pa.float64()),
])


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class TrialRecord:
    """One finished trial, flattened: its ledger row and its loss curve."""

    row: dict[str, Any]
    axes: tuple[str, ...]
    steps: np.ndarray  # int64, sorted, unique
    train_loss: np.ndarray  # float64, NaN where not measured
    val_loss: np.ndarray

    @property
    def trial_id(self) -> str:
        return self.row["trial_id"]


def trial_record(
    trial_id: str,
    result: TrialResult,
    *,
    axes: Mapping[str, Any],
    columns: Mapping[str, Any],
) -> TrialRecord:
    """Flatten a trial's result into a ledger record.

    `axes`: the swept hyperparameters, named as in the spec (numbers are stored as float64).
    `columns`: level, width, seed (required); node, gpu_ids, attempt, workers, nodes, point_id,
    sampler_trial, finished_at (optional); any other key becomes an extra column. A sweep's columns and their
    types are fixed by the first trial it records.
    """
    if not isinstance(trial_id, str):
        raise TypeError(f"trial_id: must be a non-empty string; got {trial_id!r}")
    if not trial_id:
        raise ValueError("trial_id: must be a non-empty string; got ''")
    summary = result.summary()
    for source, names in (("axes", axes), ("columns", columns)):
        for name in names:
            # "__" names are pyarrow's special fields (__fragment_index, ...), which reads use
            if not isinstance(name, str):
                raise TypeError(f"{source}: column names must be non-empty strings not starting with '__'; got {name!r}")
            if not name or name.startswith("__"):
                raise ValueError(f"{source}: column names must be non-empty strings not starting with '__'; got {name!r}")
    clash = (set(axes) & (set(CORE_SCHEMA.names) | set(columns) | set(summary))) | (
        set(columns) & (set(summary) | {"trial_id"})
    )
    if clash:
        raise ValueError(
            f"{min(clash)}: would name two ledger columns (an axis, a result field or a given column); rename it"
        )
    missing = [name for name in REQUIRED_COLUMNS if columns.get(name) is None]
    if missing:
        raise ValueError(f"{missing[0]}: is required in the ledger row; pass it in `columns`")

    row: dict[str, Any] = {
        "trial_id": trial_id, "node": "", "gpu_ids": "", "attempt": 1, "workers": 1, "nodes": None,
        "finished_at": dt.datetime.now(dt.timezone.utc),
        **summary, **columns,
    }
    if row["status"] not in STATUSES:
        raise ValueError(f"status: must be one of {', '.join(STATUSES)}; got {row['status']!r}")
    if row["status"] != "completed":
        # final_loss is what an optimiser ranks on: only a finished run has one. A diverged run's
        # last measured loss stays in its curve.
        row["final_loss"] = math.nan
    for field in CORE_SCHEMA:
        value = row.get(field.name)
        if value is None and field.name not in NULLABLE:
            raise ValueError(f"{field.name}: must not be empty in a ledger row")
        row[field.name] = coerce(field.name, value, field.type)
    for name in axes:
        row[name] = coerce(name, axes[name], infer_type(name, [axes[name]], axis=True))
    for name in set(row) - set(CORE_SCHEMA.names) - set(axes):
        if row[name] is not None:
            row[name] = coerce(name, row[name], infer_type(name, [row[name]], axis=False))

    steps, train, val = _merge_curves(result)
    return TrialRecord(row=row, axes=tuple(axes), steps=steps, train_loss=train, val_loss=val)


def _merge_curves(result: TrialResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per step that has a train or a validation loss; NaN for the one not measured."""
    curves = []
    for steps, losses, name in (
        (result.train_steps, result.train_loss, "train_loss"),
        (result.val_steps, result.val_loss, "val_loss"),
    ):
        if len(steps) != len(losses):
            raise ValueError(f"{name}: has {len(losses)} values for {len(steps)} steps; they must match")
        step_array = np.asarray(steps) if len(steps) else np.zeros(0, np.int64)
        if not np.issubdtype(step_array.dtype, np.integer):
            raise TypeError(f"{name}: steps must be whole numbers; got {list(steps)[:3]!r}")
        try:
            curves.append((step_array.astype(np.int64), np.asarray(losses, dtype=np.float64)))
        except (TypeError, ValueError):
            raise TypeError(f"{name}: must be numbers; got {list(losses)[:3]!r}") from None
    all_steps = np.union1d(curves[0][0], curves[1][0])
    merged = []
    for steps, losses in curves:
        column = np.full(len(all_steps), np.nan)
        column[np.searchsorted(all_steps, steps)] = losses
        merged.append(column)
    return all_steps, merged[0], merged[1]


def _missing_core(schema: pa.Schema) -> list[str] | None:
    """The ADDED_COLUMNS a trials part predates; None if `schema` is no older trials part (today's
    trials parts, curves parts, a stray file)."""
    fields, at, missing = list(schema), 0, []
    for core in CORE_SCHEMA:
        if at < len(fields) and (fields[at].name, fields[at].type) == (core.name, core.type):
            at += 1
        elif core.name in ADDED_COLUMNS:
            missing.append(core.name)
        else:
            return None
    return missing or None


def upgrade_schema(schema: pa.Schema) -> pa.Schema:
    """A trials part's schema with the ADDED_COLUMNS it predates, in their CORE_SCHEMA places;
    any other schema as it is."""
    for name in _missing_core(schema) or ():
        schema = schema.insert(CORE_SCHEMA.get_field_index(name), CORE_SCHEMA.field(name))
    return schema


def upgrade_table(table: pa.Table) -> pa.Table:
    """A whole trials part read from disk, with the ADDED_COLUMNS it predates as they read there."""
    for name in _missing_core(table.schema) or ():
        field = CORE_SCHEMA.field(name)
        fill = pa.array([ADDED_COLUMNS[name]] * table.num_rows, field.type)
        table = table.add_column(CORE_SCHEMA.get_field_index(name), field, fill)
    return table


def total_flops(trials: Any) -> float:
    """Everything `trials` (Ledger.trials() rows) spent: model plus optimizer FLOPs; a row recorded
    before optimizer FLOPs were (null there) counts its model FLOPs."""
    if not len(trials):
        return 0.0
    return float(trials["flops"].sum() + trials["optimizer_flops"].fillna(0.0).sum())


def coerce(name: str, value: Any, type_: pa.DataType) -> Any:
    """`value` as the Python scalar Parquet will store under `type_`, or TypeError.

    Done by hand because pyarrow silently truncates 3.5 to 3 when asked for int64.
    """
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if pa.types.is_integer(type_):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        kind = "a whole number"
    elif pa.types.is_floating(type_):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        kind = "a number"
    elif pa.types.is_string(type_):
        if isinstance(value, str):
            return value
        kind = "a string"
    elif pa.types.is_boolean(type_):
        if isinstance(value, bool):
            return value
        kind = "true or false"
    elif pa.types.is_timestamp(type_):
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            return value.astimezone(dt.timezone.utc)
        kind = "a timezone-aware datetime"
    else:  # pragma: no cover - the ledger only creates the types above
        kind = str(type_)
    raise TypeError(f"{name}: must be {kind} to match its ledger column ({type_}); got {value!r}")


def infer_type(name: str, values: list[Any], *, axis: bool) -> pa.DataType:
    """The column type for a non-core column, from its values in the first recorded batch."""
    present = [v.item() if isinstance(v, np.generic) else v for v in values if v is not None]
    if not present:
        raise ValueError(f"{name}: is empty in the first trials recorded, so its column type cannot be fixed; give it a value")
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, str) for v in present):
        return pa.string()
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present):
        # An axis like weight_decay may start at 0 and go on to 0.1: axes are always float.
        if not axis and all(isinstance(v, numbers.Integral) for v in present):
            return pa.int64()
        return pa.float64()
    raise TypeError(f"{name}: must hold numbers, strings or booleans (one kind); got {present[:3]!r}")
