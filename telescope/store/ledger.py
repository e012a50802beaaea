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

Damage from outside (a part truncated by a partial copy or a full disk, overwritten, another
sweep's part copied in) makes every read raise LedgerError naming the file (telescope.store.parts);
`quarantine_unreadable`, which `resume` calls, moves such parts and their partners to
DIR/quarantine/ so that their trials run again.

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

import dataclasses
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

from telescope.errors import LedgerError
from telescope.store.files import TMP_NAME, fsync_dir, move_into, write_table
from telescope.store.parts import AXES_KEY, Damaged, Part, axes_of, check_curves, list_parts, read_part, trials_layout
from telescope.store.records import CORE_SCHEMA, CURVE_SCHEMA, NULLABLE, TrialRecord, coerce, infer_type

TRIALS_DIR = "trials.parquet"
CURVES_DIR = "curves.parquet"
QUARANTINE_DIR = "quarantine"  # damaged parts that `quarantine_unreadable` moved out of the ledger
_COUNTER_RE = re.compile(r"^\.?part-(\d+)-")  # committed parts and their temporary files
_READ_ATTEMPTS = 5  # a compaction may delete a part between listing and opening it
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class SetAside:
    """One part file that `Ledger.quarantine_unreadable` moved into DIR/quarantine/."""

    source: Path  # where it was
    target: Path  # where it is now
    reason: str  # what is wrong with it, or which damaged part it went with
    # The sweep's trials it took out of the ledger, as far as either file of its pair reads; ()
    # also for a part of another sweep, whose trials were never this ledger's.
    trial_ids: tuple[str, ...]

    def note(self) -> str:
        """One line for the user: what was moved, why, and which trials run again."""
        ids = self.trial_ids
        rerun = (f"its {len(ids)} trial{'s' if len(ids) != 1 else ''} ({_first(ids)}) will run again" if ids
                 else "any of its trials the sweep needs will run again")
        return f"set aside {self.source} into {self.target.parent}/: {self.reason}; {rerun}"


def _first(ids: tuple[str, ...], shown: int = 2) -> str:
    return ", ".join(ids[:shown]) + (f", and {len(ids) - shown} more" if len(ids) > shown else "")


class Ledger:
    """The trials and curves of one sweep directory. Reading needs no lock; writing needs
    SweepLock(DIR): one writer, which caches the ids it has recorded."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.trials_dir = self.path / TRIALS_DIR
        self.curves_dir = self.path / CURVES_DIR
        self._schema: pa.Schema | None = None  # the sweep's trials schema, fixed by its first append
        self._known: set[str] | None = None  # writer's cache of recorded trial ids

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    # -- reading

    def trials(self) -> pd.DataFrame:
        """One row per recorded trial (the first by part order if an id was ever written twice).

        Columns: the core schema, then the sweep's axes and extra columns. dtypes do not depend
        on the data: core int columns are int64, nullable ints are pandas Int64.
        """
        table, _ = self._reading(lambda: self._read_once(curves=False))
        return _to_pandas(table)

    def curves(self) -> pd.DataFrame:
        """trial_id, step, train_loss, val_loss of recorded trials only, in recording order."""
        _, curves = self._reading(lambda: self._read_once(curves=True))
        assert curves is not None
        return curves.to_pandas()

    def recorded_ids(self) -> set[str]:
        """Ids that have a final row, whatever its status: running them again would be a no-op."""
        table, _ = self._reading(lambda: self._read_once(curves=False, columns=["trial_id"]))
        return set(table.column("trial_id").to_pylist())

    def axes(self) -> list[str]:
        """The swept axes' column names, in spec order ([] before the first trial is recorded)."""
        schema = self._reference_schema()
        return list(axes_of(schema) or ()) if schema is not None else []

    def n_parts(self) -> int:
        """How many trials part files are committed (compaction folds them into one)."""
        return len(list_parts(self.trials_dir))

    def _reference_schema(self) -> pa.Schema | None:
        def read() -> pa.Schema | None:
            parts = [read_part(self.trials_dir / n, footer_only=True) for n in list_parts(self.trials_dir)]
            schema, damaged = trials_layout(parts)
            if damaged:
                raise damaged[0]
            return schema

        if self._schema is None:
            self._schema = self._reading(read)
        return self._schema

    def _reading(self, read: Callable[[], T]) -> T:
        """`read`, again if a compaction deleted a listed part; a damaged part is a LedgerError."""
        try:
            return _retry_vanished(read)
        except Damaged as err:
            raise LedgerError(
                str(err.path),
                f"{err.reason}; run 'telescope resume {self.path}' to set it aside and re-run its trials, "
                "or restore it from a copy",
            ) from None
        except FileNotFoundError as err:  # listed, then missing at every attempt: a dangling link?
            raise LedgerError(
                str(err.filename or self.path), f"a part file listed cannot be opened ({err.strerror or err})"
            ) from None

    def _read_once(
        self, *, curves: bool, columns: list[str] | None = None,
        trial_parts: list[str] | None = None, curve_parts: list[str] | None = None,
    ) -> tuple[pa.Table, pa.Table | None]:
        """Deduplicated trials (`columns` of them, or all) and, if asked, their committed curves.

        Both directories are listed before any file is read. Compaction deletes old trials parts
        before old curves parts, so a trials part that is still readable after both listings had
        its curves part listed too; a part deleted in between raises FileNotFoundError (retry).
        Every part is checked, the curves parts of committed trials too (their footers, when the
        curves are not asked for): one damaged file raises Damaged.
        """
        trial_parts = list_parts(self.trials_dir) if trial_parts is None else trial_parts
        curve_parts = list_parts(self.curves_dir) if curve_parts is None else curve_parts
        if not trial_parts:
            empty = CORE_SCHEMA.empty_table()
            return (empty.select(columns) if columns else empty), (CURVE_SCHEMA.empty_table() if curves else None)

        parts = [read_part(self.trials_dir / name, columns) for name in trial_parts]
        schema, damaged = trials_layout(parts)
        if damaged:
            raise damaged[0]
        assert schema is not None
        committed = set(trial_parts)
        wanted = [name for name in curve_parts if name in committed]
        curve_files = [check_curves(read_part(self.curves_dir / name, footer_only=not curves)) for name in wanted]

        names = columns or schema.names
        table, part_of_row = _concat([_table(p).select(names) for p in parts], [schema.field(n) for n in names])
        # Keep the first row of each id by part order.
        first = ~pd.Series(table.column("trial_id").to_numpy(zero_copy_only=False)).duplicated().to_numpy()
        dropped: dict[str, list[str]] = {}  # part name -> ids whose row there is a duplicate
        for index, trial_id in zip(part_of_row[~first], table.column("trial_id").filter(pa.array(~first)).to_pylist()):
            dropped.setdefault(trial_parts[index], []).append(trial_id)
        table = table.filter(pa.array(first))
        if not curves:
            return table, None

        raw, fragment = _concat([_table(p) for p in curve_files], list(CURVE_SCHEMA))
        # A curves part holds the curves of exactly the trials in the trials part of its name, so
        # only the curves of rows dropped as duplicates need filtering out.
        stale = np.zeros(raw.num_rows, dtype=bool)
        for index, name in enumerate(wanted):
            if name in dropped:
                ids = pa.array(dropped[name], pa.string())
                stale |= (fragment == index) & pc.is_in(raw.column("trial_id"), value_set=ids).to_numpy(
                    zero_copy_only=False
                )
        return table, raw.filter(pa.array(~stale))

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
                raise ValueError(f"trial_id: {record.trial_id!r} appears twice in one append; ids must be unique")
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
        trial_parts, curve_parts = list_parts(self.trials_dir), list_parts(self.curves_dir)
        tmp_files = [d / n for d in (self.trials_dir, self.curves_dir) if d.is_dir()
                     for n in os.listdir(d) if TMP_NAME.match(n)]
        if len(trial_parts) <= 1 and set(curve_parts) <= set(trial_parts) and not tmp_files:
            return 0
        replaced = 0
        if trial_parts:
            trials, curves = self._reading(
                lambda: self._read_once(curves=True, trial_parts=trial_parts, curve_parts=curve_parts)
            )
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

    def quarantine_unreadable(self) -> list[SetAside]:
        """Move every damaged part into DIR/quarantine/, each with the part of the same name in
        the other table so that no trial is left half recorded; returns what was moved, in part
        order. Nothing is deleted, and a name already in DIR/quarantine/ is never overwritten.

        The trials of a moved part are no longer recorded, so a resumed sweep runs them again.
        Every file is read in full, so damage inside the data is found too (readers check only
        the footers of curves parts whose curves they do not return). Hold SweepLock.
        """
        trial_names, curve_names = list_parts(self.trials_dir), set(list_parts(self.curves_dir))
        damage: dict[str, Damaged] = {}  # part name -> the damage found in its pair
        ids: dict[str, tuple[str, ...]] = {}  # part name -> its trials, from whichever file reads
        readable: list[Part] = []
        for name in trial_names:
            try:
                readable.append(read_part(self.trials_dir / name))
            except Damaged as err:
                damage[name] = err
        foreign = trials_layout(readable)[1]  # not this sweep's columns: nor are its trials
        damage |= {err.path.name: err for err in foreign}
        ids |= {err.path.name: () for err in foreign}
        ids |= {part.path.name: _trial_ids(part) for part in readable if part.path.name not in ids}
        for name in trial_names:
            if name not in curve_names:  # never written so; e.g. a move below cut short by a crash
                damage.setdefault(name, Damaged(self.trials_dir / name, "its curves part is missing"))
                continue
            try:
                ids.setdefault(name, _trial_ids(check_curves(read_part(self.curves_dir / name))))
            except Damaged as err:
                damage.setdefault(name, err)

        quarantine = self.path / QUARANTINE_DIR
        moves: list[tuple[str, Path, Path, str]] = []  # part name, from, to, why
        for name in (n for n in trial_names if n in damage):
            err = damage[name]
            partner_reason = ("the curves of the damaged trials part" if err.path.parent == self.trials_dir
                              else "its curves part is damaged")
            # Curves first: a crash between the two moves leaves a trials part without curves,
            # which the next call sets aside; the other order would leave an orphan curves part,
            # which compaction deletes.
            pair = []
            for directory in ([self.curves_dir] if name in curve_names else []) + [self.trials_dir]:
                source = directory / name
                target = move_into(source, quarantine, f"{directory.name.removesuffix('.parquet')}-{name}")
                pair.append((name, source, target, err.reason if source == err.path else partner_reason))
            moves += sorted(pair, key=lambda move: move[1] != err.path)  # the damaged file first
        self._schema, self._known = None, None  # the moved parts' trials are no longer recorded
        recorded = self.recorded_ids() if moves else set()
        return [SetAside(source, target, why, tuple(i for i in ids.get(name, ()) if i not in recorded))
                for name, source, target, why in moves]

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


def _trial_ids(part: Part) -> tuple[str, ...]:
    """The distinct trial ids a part holds, in order (() if it has no trial_id column)."""
    if part.table is None or "trial_id" not in part.table.column_names:
        return ()
    return tuple(dict.fromkeys(part.table.column("trial_id").to_pylist()))


def _table(part: Part) -> pa.Table:
    assert part.table is not None, "a part that lacks a column asked for has another layout"
    return part.table


def _concat(tables: list[pa.Table], fields: list[pa.Field]) -> tuple[pa.Table, np.ndarray]:
    """The parts' tables as one (no schema metadata), and the index of the part of each row."""
    schema = pa.schema(fields)
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables]) if tables else schema.empty_table()
    return table, np.repeat(np.arange(len(tables)), [t.num_rows for t in tables])


def _retry_vanished(read: Callable[[], T]) -> T:
    """Run a read again when a compaction deleted a listed part before it was opened."""
    for attempt in range(_READ_ATTEMPTS):
        try:
            return read()
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _schema_for(records: list[TrialRecord]) -> pa.Schema:
    """A new sweep's trials schema: core columns, then the axes, then extra columns."""
    axes = records[0].axes
    extras: list[str] = []
    for record in records:
        extras += [k for k in record.row if k not in CORE_SCHEMA.names and k not in record.axes and k not in extras]
    fields = list(CORE_SCHEMA)
    for name in (*axes, *extras):
        fields.append(pa.field(name, infer_type(name, [r.row.get(name) for r in records], axis=name in axes)))
    return pa.schema(fields, metadata={AXES_KEY: json.dumps(list(axes)).encode()})


def _trials_table(records: list[TrialRecord], schema: pa.Schema) -> pa.Table:
    axes = list(axes_of(schema) or ())
    # The caller builds records for this ledger (Ledger.axes() says its axes): a misfit is a bug.
    for record in records:
        if set(record.axes) != set(axes):
            raise ValueError(
                f"axes: trial {record.trial_id!r} sweeps {list(record.axes)}, but this ledger's axes are {axes}"
            )
        unknown = set(record.row) - set(schema.names)
        if unknown:
            raise ValueError(
                f"{min(unknown)}: is not a column of this sweep's ledger (its columns were fixed by the first trial recorded: "
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
