"""The ledger: a sweep directory's single source of truth, and what `resume` reads.

A sweep directory DIR holds

    DIR/spec.toml          the sweep spec, as the user wrote it
    DIR/sweep.json         {"format": 1, "spec_fingerprint", "name", "created_at", "telescope_version"}
    DIR/trials.parquet/    one row per finished trial (any status), in part files
    DIR/curves.parquet/    trial_id, step, train_loss, val_loss, in part files of the same names
    DIR/.lock              flock'ed by the controller that writes (see SweepLock)

Both tables are Parquet dataset directories, so `pandas.read_parquet("DIR/trials.parquet")` works;
`Ledger` is the reader that also guarantees one row per trial id.

Crash safety: `Ledger.append` writes the batch's curves part, then its trials part, each one
tmp file -> fsync -> rename -> fsync of the directory. A trials part is the commit marker: a
trial exists once its trials part does, and its curves are the ones in the curves part of the
same name. A SIGKILL at any moment therefore leaves either nothing visible, or an orphan curves
part that readers ignore, or the whole batch. Temporary files start with "." so pyarrow and
pandas skip them too.

Readers see one row per trial id (the first by part order, should a retried write ever have
committed an id twice) and only committed curves. `compact` folds the parts into one without
readers ever seeing a duplicate or a gap.

One writer at a time: hold `SweepLock(DIR)` while calling `open_sweep_dir`, `append` and
`compact`. Readers (status, export, notebooks) need no lock.

    with SweepLock(out):
        ledger = open_sweep_dir(out, spec_text, fingerprint, name)
        todo = [t for t in trials if t.id not in ledger.completed_ids()]
        ...
        ledger.append([trial_record(trial_id, result, axes={"lr": 3e-3}, columns={"level": 0, ...})])
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import math
import numbers
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import telescope
from telescope.config import TrialResult
from telescope.errors import ConfigError

FORMAT = 1
SPEC_FILE = "spec.toml"
META_FILE = "sweep.json"
LOCK_FILE = ".lock"
TRIALS_DIR = "trials.parquet"
CURVES_DIR = "curves.parquet"
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
    ("flops", pa.float64()),
    ("wall_time_s", pa.float64()),
    ("steps_done", pa.int64()),
    ("n_params", pa.int64()),
    ("node", pa.string()),
    ("device", pa.string()),
    ("gpu_ids", pa.string()),  # comma-separated, "" on CPU
    ("error", pa.string()),  # null unless the trial failed or diverged
    ("point_id", pa.string()),  # the controller's grid-point id, if it has one
    ("sampler_trial", pa.int64()),  # the sampler's (e.g. Optuna's) trial number, if any
    ("attempt", pa.int64()),
    ("finished_at", pa.timestamp("us", tz="UTC")),
])
NULLABLE = frozenset({"error", "point_id", "sampler_trial"})
# What the caller must give in `columns`; every other core column has a default or comes from
# the TrialResult.
REQUIRED_COLUMNS = ("level", "width", "seed")
CURVE_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("step", pa.int64()),
    ("train_loss", pa.float64()),  # NaN where not measured
    ("val_loss", pa.float64()),
])
_AXES_KEY = b"telescope.axes"  # schema metadata: which extra columns are swept axes, in order
_PART_RE = re.compile(r"^part-(\d+)-[0-9a-f]+\.parquet$")
_COUNTER_RE = re.compile(r"^\.?part-(\d+)-")  # committed parts and their temporary files
_TMP_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
_READ_ATTEMPTS = 5  # a compaction may delete a part between listing and opening it
_LOCK_ATTEMPTS, _LOCK_RETRY_S = 4, 0.05
T = TypeVar("T")


# ----------------------------------------------------------------------------- records


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
    `columns`: level, width, seed (required); node, gpu_ids, attempt, point_id, sampler_trial,
    finished_at (optional); any other key becomes an extra column. A sweep's columns and their
    types are fixed by the first trial it records.
    """
    if not isinstance(trial_id, str) or not trial_id:
        raise ConfigError("trial_id", f"must be a non-empty string; got {trial_id!r}")
    summary = result.summary()
    for source, names in (("axes", axes), ("columns", columns)):
        for name in names:
            # "__" names are pyarrow's special fields (__fragment_index, ...), which reads use
            if not isinstance(name, str) or not name or name.startswith("__"):
                raise ConfigError(source, f"column names must be non-empty strings not starting with '__'; got {name!r}")
    clash = (set(axes) & (set(CORE_SCHEMA.names) | set(columns) | set(summary))) | (
        set(columns) & (set(summary) | {"trial_id"})
    )
    if clash:
        raise ConfigError(
            sorted(clash)[0], "would name two ledger columns (an axis, a result field or a given column); rename it"
        )
    missing = [name for name in REQUIRED_COLUMNS if columns.get(name) is None]
    if missing:
        raise ConfigError(missing[0], "is required in the ledger row; pass it in `columns`")

    row: dict[str, Any] = {
        "trial_id": trial_id, "node": "", "gpu_ids": "", "attempt": 1,
        "finished_at": dt.datetime.now(dt.timezone.utc),
        **summary, **columns,
    }
    if row["status"] not in STATUSES:
        raise ConfigError("status", f"must be one of {', '.join(STATUSES)}; got {row['status']!r}")
    if row["status"] != "completed":
        # final_loss is what an optimiser ranks on: only a finished run has one. A diverged run's
        # last measured loss stays in its curve.
        row["final_loss"] = math.nan
    for field in CORE_SCHEMA:
        value = row.get(field.name)
        if value is None and field.name not in NULLABLE:
            raise ConfigError(field.name, "must not be empty in a ledger row")
        row[field.name] = _coerce(field.name, value, field.type)
    for name in axes:
        row[name] = _coerce(name, axes[name], _infer_type(name, [axes[name]], axis=True))
    for name in set(row) - set(CORE_SCHEMA.names) - set(axes):
        if row[name] is not None:
            row[name] = _coerce(name, row[name], _infer_type(name, [row[name]], axis=False))

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
            raise ConfigError(name, f"has {len(losses)} values for {len(steps)} steps; they must match")
        step_array = np.asarray(steps) if len(steps) else np.zeros(0, np.int64)
        if not np.issubdtype(step_array.dtype, np.integer):
            raise ConfigError(name, f"steps must be whole numbers; got {list(steps)[:3]!r}")
        try:
            curves.append((step_array.astype(np.int64), np.asarray(losses, dtype=np.float64)))
        except (TypeError, ValueError):
            raise ConfigError(name, f"must be numbers; got {list(losses)[:3]!r}") from None
    all_steps = np.union1d(curves[0][0], curves[1][0])
    merged = []
    for steps, losses in curves:
        column = np.full(len(all_steps), np.nan)
        column[np.searchsorted(all_steps, steps)] = losses
        merged.append(column)
    return all_steps, merged[0], merged[1]


def _coerce(name: str, value: Any, type_: pa.DataType) -> Any:
    """`value` as the Python scalar Parquet will store under `type_`, or ConfigError.

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
    raise ConfigError(name, f"must be {kind} to match its ledger column ({type_}); got {value!r}")


def _infer_type(name: str, values: list[Any], *, axis: bool) -> pa.DataType:
    """The column type for a non-core column, from its values in the first recorded batch."""
    present = [v.item() if isinstance(v, np.generic) else v for v in values if v is not None]
    if not present:
        raise ConfigError(
            name, "is empty in the first trials recorded, so its column type cannot be fixed; give it a value"
        )
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, str) for v in present):
        return pa.string()
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present):
        # An axis like weight_decay may start at 0 and go on to 0.1: axes are always float.
        if not axis and all(isinstance(v, numbers.Integral) for v in present):
            return pa.int64()
        return pa.float64()
    raise ConfigError(name, f"must hold numbers, strings or booleans (one kind); got {present[:3]!r}")


# ----------------------------------------------------------------------------- ledger


class Ledger:
    """The trials and curves of one sweep directory. Reading needs no lock; writing needs
    SweepLock(DIR): one writer, which caches the ids it has recorded."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.trials_dir = self.path / TRIALS_DIR
        self.curves_dir = self.path / CURVES_DIR
        self._schema: pa.Schema | None = None  # the sweep's trials schema, fixed by its first part
        self._known: set[str] | None = None  # writer's cache of recorded trial ids

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    # -- reading

    def trials(self) -> pd.DataFrame:
        """One row per recorded trial (the first by part order if an id was ever written twice).

        Columns: the core schema, then the sweep's axes and extra columns. dtypes do not depend
        on the data: core int columns are int64, nullable ints are pandas Int64.
        """
        table, _ = self._read(curves=False)
        return _to_pandas(table)

    def curves(self) -> pd.DataFrame:
        """trial_id, step, train_loss, val_loss of recorded trials only, in recording order."""
        _, curves = self._read(curves=True)
        assert curves is not None
        return curves.to_pandas()

    def completed_ids(self) -> set[str]:
        """Ids that have a final row, whatever its status: running them again would be a no-op."""
        def read() -> set[str]:
            paths = [str(self.trials_dir / name) for name in _parts(self.trials_dir)]
            if not paths:
                return set()
            return set(pads.dataset(paths, format="parquet").to_table(columns=["trial_id"]).column(0).to_pylist())

        return _retry_vanished(read)

    def axes(self) -> list[str]:
        """The swept axes' column names, in spec order ([] before the first trial is recorded)."""
        schema = self._reference_schema()
        if schema is None or not schema.metadata or _AXES_KEY not in schema.metadata:
            return []
        return list(json.loads(schema.metadata[_AXES_KEY]))

    def n_parts(self) -> int:
        """How many trials part files are committed (compaction folds them into one)."""
        return len(_parts(self.trials_dir))

    def _reference_schema(self) -> pa.Schema | None:
        def read() -> pa.Schema | None:
            parts = _parts(self.trials_dir)
            return pq.read_schema(self.trials_dir / parts[0]) if parts else None

        if self._schema is None:
            self._schema = _retry_vanished(read)
        return self._schema

    def _read(self, *, curves: bool) -> tuple[pa.Table, pa.Table | None]:
        return _retry_vanished(lambda: self._read_once(curves=curves))

    def _read_once(
        self, *, curves: bool, trial_parts: list[str] | None = None, curve_parts: list[str] | None = None
    ) -> tuple[pa.Table, pa.Table | None]:
        """Deduplicated trials and, if asked, their committed curves.

        Both directories are listed before any file is read. Compaction deletes old trials parts
        before old curves parts, so a trials part that is still readable after both listings had
        its curves part listed too; a part deleted in between raises FileNotFoundError (retry).
        """
        trial_parts = _parts(self.trials_dir) if trial_parts is None else trial_parts
        if curves and curve_parts is None:
            curve_parts = _parts(self.curves_dir)
        schema = self._reference_schema() if trial_parts else None
        if schema is None:
            return CORE_SCHEMA.empty_table(), (CURVE_SCHEMA.empty_table() if curves else None)

        paths = [str(self.trials_dir / name) for name in trial_parts]
        table = pads.dataset(paths, format="parquet", schema=schema).to_table(
            columns=[*schema.names, "__fragment_index"]
        )
        # Keep the first row of each id by part order (to_table keeps fragment order; the stable
        # sort makes that explicit).
        table = table.take(np.argsort(table.column("__fragment_index").to_numpy(), kind="stable"))
        first = ~pd.Series(table.column("trial_id").to_numpy(zero_copy_only=False)).duplicated().to_numpy()
        dropped: dict[str, list[str]] = {}  # part name -> ids whose row there is a duplicate
        gone = table.filter(pa.array(~first))
        for index, trial_id in zip(gone.column("__fragment_index").to_pylist(), gone.column("trial_id").to_pylist()):
            dropped.setdefault(trial_parts[index], []).append(trial_id)
        table = table.filter(pa.array(first)).drop_columns(["__fragment_index"])
        if not curves:
            return table, None

        committed = set(trial_parts)
        wanted = [name for name in curve_parts or [] if name in committed]
        if not wanted:
            return table, CURVE_SCHEMA.empty_table()
        raw = pads.dataset(
            [str(self.curves_dir / name) for name in wanted], format="parquet", schema=CURVE_SCHEMA
        ).to_table(columns=[*CURVE_SCHEMA.names, "__fragment_index"])
        # A curves part holds the curves of exactly the trials in the trials part of its name, so
        # only the curves of rows dropped as duplicates need filtering out.
        fragment = raw.column("__fragment_index").to_numpy()
        stale = np.zeros(raw.num_rows, dtype=bool)
        for index, name in enumerate(wanted):
            if name in dropped:
                ids = pa.array(dropped[name], pa.string())
                stale |= (fragment == index) & pc.is_in(raw.column("trial_id"), value_set=ids).to_numpy(
                    zero_copy_only=False
                )
        return table, raw.drop_columns(["__fragment_index"]).filter(pa.array(~stale))

    # -- writing (hold SweepLock)

    def append(self, records: Iterable[TrialRecord]) -> list[str]:
        """Commit finished trials; returns the ids written.

        Ids already in the ledger are skipped, so appending a result twice is a no-op. The first
        append fixes the sweep's columns; later records must fit them (missing nullable columns
        are stored as null).
        """
        batch = list(records)
        seen: set[str] = set()
        for record in batch:
            if record.trial_id in seen:
                raise ConfigError("trial_id", f"{record.trial_id!r} appears twice in one append; ids must be unique")
            seen.add(record.trial_id)
        if self._known is None:
            self._known = self.completed_ids()
        fresh = [r for r in batch if r.trial_id not in self._known]
        if not fresh:
            return []
        schema = self._reference_schema() or _schema_for(fresh)
        trials = _trials_table(fresh, schema)
        curves = _curves_table(fresh)
        name = self._new_part_name()
        for directory in (self.trials_dir, self.curves_dir):
            if not directory.is_dir():
                directory.mkdir(parents=True)
                _fsync_dir(directory.parent)
        _write_table(curves, self.curves_dir / name)
        _write_table(trials, self.trials_dir / name)  # the commit
        self._schema = schema
        self._known.update(r.trial_id for r in fresh)
        return [r.trial_id for r in fresh]

    def compact(self) -> int:
        """Fold all parts into one; returns how many trials parts it replaced.

        The new part is written (curves, then trials) before any old part is deleted, and it gets
        the highest part number. Old parts are deleted last-first, so the old parts left at any
        moment are a prefix in part order: an id whose first row is still there keeps that row
        (the new part holds the same), and an id whose first row is gone has lost its later
        duplicates too and reads from the new part. So readers, or a compaction killed half-way,
        never see a duplicate, a loss or a superseded row. Old trials parts go before old curves
        parts (see _read_once). Also removes orphan curves parts and temporary files left by
        crashed writers. Row order is recording order, except that an interrupted compaction
        lists the rows of the old parts it left first.
        """
        trial_parts, curve_parts = _parts(self.trials_dir), _parts(self.curves_dir)
        tmp_files = [d / n for d in (self.trials_dir, self.curves_dir) if d.is_dir()
                     for n in os.listdir(d) if _TMP_RE.match(n)]
        if len(trial_parts) <= 1 and set(curve_parts) <= set(trial_parts) and not tmp_files:
            return 0
        replaced = 0
        if trial_parts:
            trials, curves = self._read_once(curves=True, trial_parts=trial_parts, curve_parts=curve_parts)
            assert curves is not None
            # Keep the schema's metadata (the axes), which a projected read drops.
            trials = trials.replace_schema_metadata(self._reference_schema().metadata)
            name = self._new_part_name()
            _write_table(curves, self.curves_dir / name)
            _write_table(trials, self.trials_dir / name)
            replaced = len(trial_parts)
        for directory, names in ((self.trials_dir, trial_parts), (self.curves_dir, curve_parts)):
            for old in reversed(names):
                (directory / old).unlink(missing_ok=True)
        for tmp in tmp_files:
            tmp.unlink(missing_ok=True)
        for directory in (self.trials_dir, self.curves_dir):
            if directory.is_dir():
                _fsync_dir(directory)
        return replaced

    def _new_part_name(self) -> str:
        """Numbered past every part, orphan and temporary file in both directories, so names are
        never reused and a new part sorts after all others. Listed afresh each time (sub-ms) rather
        than cached, so that another Ledger object's compaction cannot make it go backwards."""
        seen = [
            int(m.group(1))
            for d in (self.trials_dir, self.curves_dir) if d.is_dir()
            for n in os.listdir(d)
            if (m := _COUNTER_RE.match(n))
        ]
        return f"part-{max(seen, default=-1) + 1:06d}-{uuid.uuid4().hex[:8]}.parquet"


def _retry_vanished(read: Callable[[], T]) -> T:
    """Run a read again when a compaction deleted a listed part before it was opened."""
    for attempt in range(_READ_ATTEMPTS):
        try:
            return read()
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _parts(directory: Path) -> list[str]:
    """Committed part files in part order; temporary files and anything else are ignored."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), n) for n in names if (m := _PART_RE.match(n))]
    return [n for _, n in sorted(found)]


def _schema_for(records: list[TrialRecord]) -> pa.Schema:
    """A new sweep's trials schema: core columns, then the axes, then extra columns."""
    axes = records[0].axes
    extras: list[str] = []
    for record in records:
        extras += [k for k in record.row if k not in CORE_SCHEMA.names and k not in record.axes and k not in extras]
    fields = list(CORE_SCHEMA)
    for name in (*axes, *extras):
        fields.append(pa.field(name, _infer_type(name, [r.row.get(name) for r in records], axis=name in axes)))
    return pa.schema(fields, metadata={_AXES_KEY: json.dumps(list(axes)).encode()})


def _trials_table(records: list[TrialRecord], schema: pa.Schema) -> pa.Table:
    axes = json.loads((schema.metadata or {}).get(_AXES_KEY, b"[]"))
    for record in records:
        if set(record.axes) != set(axes):
            raise ConfigError(
                "axes", f"trial {record.trial_id!r} sweeps {list(record.axes)}, but this ledger's axes are {axes}"
            )
        unknown = set(record.row) - set(schema.names)
        if unknown:
            raise ConfigError(
                sorted(unknown)[0],
                f"is not a column of this sweep's ledger (its columns were fixed by the first trial recorded: "
                f"{', '.join(schema.names[len(CORE_SCHEMA):]) or 'core columns only'})",
            )
    arrays = []
    for field in schema:
        values = [_coerce(field.name, r.row.get(field.name), field.type) for r in records]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _curves_table(records: list[TrialRecord]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array(np.repeat(np.array([r.trial_id for r in records], dtype=object), [len(r.steps) for r in records]), pa.string()),
            pa.array(np.concatenate([r.steps for r in records]), pa.int64()),
            pa.array(np.concatenate([r.train_loss for r in records]), pa.float64()),
            pa.array(np.concatenate([r.val_loss for r in records]), pa.float64()),
        ],
        schema=CURVE_SCHEMA,
    )


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """dtypes that do not depend on the data: ints are int64, or Int64 where nulls may occur."""
    df = table.to_pandas(types_mapper=lambda t: pd.Int64Dtype() if t == pa.int64() else None)
    for field in CORE_SCHEMA:
        if pa.types.is_integer(field.type) and field.name not in NULLABLE:
            df[field.name] = df[field.name].astype("int64")
    return df


# ----------------------------------------------------------------------------- durable files


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    payload = data.encode() if isinstance(data, str) else data
    _atomic(Path(path), lambda f: f.write(payload))


def _write_table(table: pa.Table, path: Path) -> None:
    _atomic(path, lambda f: pq.write_table(table, f))


def _atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # makes the rename itself durable


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- sweep directories


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _kind(path: Path) -> str:
    """absent | fresh (empty, or a creation cut short under our lock) | sweep | file | foreign."""
    if not path.exists():
        return "absent"
    if not path.is_dir():
        return "file"
    names = {n for n in os.listdir(path) if not _TMP_RE.match(n)}
    if META_FILE in names:
        return "sweep"
    # sweep.json is written last when a directory is created; a .lock proves telescope made it.
    if names <= {LOCK_FILE} or (LOCK_FILE in names and names <= {LOCK_FILE, SPEC_FILE}):
        return "fresh"
    return "foreign"


def _refuse_unusable(path: Path) -> str:
    kind = _kind(path)
    if kind == "file":
        raise ConfigError(str(path), "is a file, not a sweep directory; give a directory for --out")
    if kind == "foreign":
        raise ConfigError(
            str(path),
            "exists and is not a sweep directory (no sweep.json); use a new or empty directory for --out",
        )
    return kind


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), f"{META_FILE} is unreadable ({err}); restore it or start a new sweep") from None
    wanted = {"format": int, "spec_fingerprint": str, "name": str, "created_at": str, "telescope_version": str}
    bad = [k for k, t in wanted.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), t)]
    if bad:
        raise ConfigError(str(path), f"{META_FILE} is corrupt (bad or missing {', '.join(bad)}); restore it or start a new sweep")
    if meta["format"] != FORMAT:
        raise ConfigError(
            str(path),
            f"{META_FILE} has format {meta['format']}; telescope {telescope.__version__} reads format {FORMAT}",
        )
    return meta


def write_spec(path: str | os.PathLike[str], spec_text: str) -> None:
    """Store the sweep spec's text as DIR/spec.toml, atomically."""
    atomic_write(Path(path) / SPEC_FILE, spec_text)


def check_sweep_dir(path: str | os.PathLike[str], spec_fingerprint: str) -> str:
    """Read-only: whether `run` may use `path` for this spec ("absent", "sweep", ...), or a
    ConfigError. `run` calls it before taking the lock, so a refusal leaves every byte alone."""
    path = Path(path)
    kind = _refuse_unusable(path)
    if kind == "sweep":
        meta = _read_meta(path)
        if meta["spec_fingerprint"] != spec_fingerprint:
            raise ConfigError(
                str(path),
                f"holds a ledger from another spec (fingerprint {meta['spec_fingerprint']}, this spec "
                f"{spec_fingerprint}); use a new --out or `telescope resume {path}`",
            )
    return kind


def open_sweep_dir(
    path: str | os.PathLike[str], spec_text: str, spec_fingerprint: str, name: str
) -> Ledger:
    """The ledger `run` writes to: a new sweep directory, or this spec's existing one.

    Reusing a directory of the same spec makes re-running a no-op for finished trials. Refuses
    (ConfigError, no file touched) a directory of another spec or one that is not a sweep
    directory. Call it holding SweepLock(path).
    """
    path = Path(path)
    kind = check_sweep_dir(path, spec_fingerprint)
    if kind == "sweep":
        if not (path / SPEC_FILE).is_file():
            write_spec(path, spec_text)  # same fingerprint: restoring the copy loses nothing
        return Ledger(path)

    path.mkdir(parents=True, exist_ok=True)
    write_spec(path, spec_text)
    meta = {
        "format": FORMAT, "spec_fingerprint": spec_fingerprint, "name": name,
        "created_at": _utc_now(), "telescope_version": telescope.__version__,
    }
    atomic_write(path / META_FILE, json.dumps(meta, indent=2) + "\n")  # last: marks the dir complete
    if kind == "absent":
        _fsync_dir(path.parent)
    return Ledger(path)


def load_sweep_dir(path: str | os.PathLike[str]) -> tuple[Ledger, str, dict[str, Any]]:
    """An existing sweep directory, for resume/status/export: (ledger, spec text, sweep.json)."""
    path = Path(path)
    hint = "give the --out directory of a `telescope run`"
    if not path.exists():
        raise ConfigError(str(path), f"does not exist; {hint}")
    if _kind(path) != "sweep":
        raise ConfigError(str(path), f"is not a sweep directory (no {META_FILE}); {hint}")
    meta = _read_meta(path)
    try:
        spec_text = (path / SPEC_FILE).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"{SPEC_FILE} is unreadable ({err}); restore the sweep's spec there") from None
    return Ledger(path), spec_text, meta


# ----------------------------------------------------------------------------- lock


class SweepLock:
    """Exclusive right to write a sweep directory: `with SweepLock(DIR): ...`.

    An flock on DIR/.lock, which the kernel drops when the holder dies (even by SIGKILL), so a
    stale lock cannot exist. The file keeps the last holder's pid, host and start time, for the
    refusal message. The descriptor is close-on-exec, so workers started with exec (Ray) do not
    inherit the lock; a child forked without exec would hold it until it exits.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> "SweepLock":
        if self._fd is not None:
            raise RuntimeError("SweepLock is not reentrant")
        _refuse_unusable(self.path)  # never litter a directory that is not ours with a .lock
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(_LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _LOCK_ATTEMPTS - 1:
                    holder = _holder(fd)
                    os.close(fd)
                    raise ConfigError(
                        str(self.path),
                        f"is in use by another telescope controller ({holder}); wait for it to finish or stop it",
                    ) from None
                time.sleep(_LOCK_RETRY_S)  # maybe only a `lock_holder` probe (microseconds)
            except BaseException:
                os.close(fd)
                raise
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _utc_now()}).encode()
        # Overwrite, then cut: a reader never sees an empty file once a holder has written one.
        os.pwrite(fd, info, 0)
        os.ftruncate(fd, len(info))
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder(path: str | os.PathLike[str]) -> str | None:
    """Who is writing DIR now ("pid N on HOST since T"), or None; changes nothing.

    Probes with a shared flock that it drops at once; SweepLock retries briefly, so a probe never
    makes a starting controller think the directory is taken.
    """
    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # mid-rewrite by a new holder, or damaged
        return "holder unknown"
