"""The ledger: a sweep directory's single source of truth, and what `resume` reads.

    DIR/trials.parquet/    one row per finished trial (any status), in part files
    DIR/curves.parquet/    trial_id, step, train_loss, val_loss, in part files of the same names

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

One writer at a time: hold `SweepLock(DIR)` (telescope.store.lock) while calling
`open_sweep_dir` (telescope.store.directory), `append` and `compact`. Readers (status, export,
notebooks) need no lock.

    with SweepLock(out):
        ledger = open_sweep_dir(out, spec_text, fingerprint, name)
        todo = [t for t in trials if t.id not in ledger.recorded_ids()]
        ...
        ledger.append([trial_record(trial_id, result, axes={"lr": 3e-3}, columns={"level": 0, ...})])
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from telescope.errors import ConfigError
from telescope.store.files import TMP_NAME, fsync_dir, write_table
from telescope.store.records import CORE_SCHEMA, CURVE_SCHEMA, NULLABLE, TrialRecord, coerce, infer_type

TRIALS_DIR = "trials.parquet"
CURVES_DIR = "curves.parquet"
_AXES_KEY = b"telescope.axes"  # schema metadata: which extra columns are swept axes, in order
_PART_RE = re.compile(r"^part-(\d+)-[0-9a-f]+\.parquet$")
_COUNTER_RE = re.compile(r"^\.?part-(\d+)-")  # committed parts and their temporary files
_READ_ATTEMPTS = 5  # a compaction may delete a part between listing and opening it
T = TypeVar("T")


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

    def recorded_ids(self) -> set[str]:
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
            self._known = self.recorded_ids()
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
                fsync_dir(directory.parent)
        write_table(curves, self.curves_dir / name)
        write_table(trials, self.trials_dir / name)  # the commit
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
                     for n in os.listdir(d) if TMP_NAME.match(n)]
        if len(trial_parts) <= 1 and set(curve_parts) <= set(trial_parts) and not tmp_files:
            return 0
        replaced = 0
        if trial_parts:
            trials, curves = self._read_once(curves=True, trial_parts=trial_parts, curve_parts=curve_parts)
            assert curves is not None
            # Keep the schema's metadata (the axes), which a projected read drops.
            trials = trials.replace_schema_metadata(self._reference_schema().metadata)
            name = self._new_part_name()
            write_table(curves, self.curves_dir / name)
            write_table(trials, self.trials_dir / name)
            replaced = len(trial_parts)
        for directory, names in ((self.trials_dir, trial_parts), (self.curves_dir, curve_parts)):
            for old in reversed(names):
                (directory / old).unlink(missing_ok=True)
        for tmp in tmp_files:
            tmp.unlink(missing_ok=True)
        for directory in (self.trials_dir, self.curves_dir):
            if directory.is_dir():
                fsync_dir(directory)
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
        fields.append(pa.field(name, infer_type(name, [r.row.get(name) for r in records], axis=name in axes)))
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
        values = [coerce(field.name, r.row.get(field.name), field.type) for r in records]
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
