"""A ledger table's part files: listing them, and reading one so that damage names the file.

A part is damaged when it cannot be read as Parquet (truncated by a partial copy or a full disk,
overwritten, emptied) or when its columns are not those of the table it sits in (another sweep's
part copied in). Reading raises `Damaged` for it; the ledger turns that into a LedgerError for
readers (telescope.store.ledger) and `Ledger.quarantine_unreadable` moves such parts aside.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from telescope.errors import LedgerError
from telescope.store.records import CORE_SCHEMA, CURVE_SCHEMA, upgrade_schema, upgrade_table

PART_RE = re.compile(r"^part-(\d+)-[0-9a-f]+\.parquet$")
AXES_KEY = b"telescope.axes"  # trials schema metadata: which extra columns are swept axes, in order

Layout = tuple[tuple[tuple[str, str], ...], tuple[str, ...] | None]  # (name, type) per column, axes


class Damaged(Exception):
    """A part file that cannot be used; `reason` says what is wrong with it, for a message."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


@dataclasses.dataclass(frozen=True)
class Part:
    """One part file as read: its footer's schema and row count, and the columns asked for."""

    path: Path
    schema: pa.Schema
    num_rows: int
    table: pa.Table | None  # None when only the footer was read, or a column asked for is absent


def list_parts(directory: Path) -> list[str]:
    """Committed part files in part order; temporary files and anything else are ignored."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise LedgerError(str(directory), f"cannot be listed ({err.strerror or err}); check its permissions and disk") from None
    found = [(int(m.group(1)), n) for n in names if (m := PART_RE.match(n))]
    return [n for _, n in sorted(found)]


def read_part(path: Path, columns: Sequence[str] | None = None, *, footer_only: bool = False) -> Part:
    """Read one part (`columns`, or all of them); raises Damaged if it is not readable Parquet.

    Pages are checked against their checksums where the writer stored them (telescope.store.files
    does), so damage inside the data is found rather than read as values. FileNotFoundError
    passes through: a compaction deleted the part after it was listed, and the caller reads again.
    """
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as file:
            written, rows = file.schema_arrow, file.metadata.num_rows
            schema = upgrade_schema(written)  # a part written before the latest core columns
            if footer_only or (columns is not None and not set(columns) <= set(schema.names)):
                return Part(path, schema, rows, None)
            if schema is written:
                return Part(path, schema, rows, file.read(columns=list(columns) if columns is not None else None))
            table = upgrade_table(file.read())
            return Part(path, schema, rows, table.select(list(columns)) if columns is not None else table)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as err:
        # pyarrow reports a bad footer as ArrowInvalid and bad pages as a bare OSError; an OSError
        # with an errno is the file system's (permissions, an I/O error), worth naming as such.
        if isinstance(err, OSError) and not isinstance(err, pa.ArrowException) and err.errno is not None:
            raise Damaged(path, f"cannot be read ({err.strerror})") from None
        if _size(path) == 0:
            raise Damaged(path, "an empty file, not a Parquet file (a full disk?)") from None
        raise Damaged(path, "not a readable Parquet file (truncated?)") from None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def axes_of(schema: pa.Schema) -> tuple[str, ...] | None:
    """The swept axes a trials schema records, () if it records none, None if that is unreadable."""
    raw = (schema.metadata or {}).get(AXES_KEY)
    if raw is None:
        return ()
    try:
        axes = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(axes, list) or not all(isinstance(a, str) for a in axes):
        return None
    return tuple(axes)


def _columns(schema: pa.Schema) -> tuple[tuple[str, str], ...]:
    return tuple((f.name, str(f.type)) for f in schema)


def trials_layout(parts: Sequence[Part]) -> tuple[pa.Schema | None, list[Damaged]]:
    """The trials table's schema, and every part that does not have it.

    All parts of a sweep share one schema (the first append fixes it). Which one is the sweep's
    when parts disagree: the one that holds the most trials (ties: the earliest part), so that a
    stray part copied in is the one named, whatever its number.
    """
    core = _columns(CORE_SCHEMA)
    layouts: list[Layout] = [(_columns(p.schema), axes_of(p.schema)) for p in parts]
    ledger_like = [cols[: len(core)] == core and axes is not None for cols, axes in layouts]
    held: dict[Layout, int] = {}  # insertion order is part order, and max keeps the first of a tie
    for part, layout, ok in zip(parts, layouts, ledger_like):
        if ok:
            held[layout] = held.get(layout, 0) + part.num_rows
    best = max(held, key=held.__getitem__) if held else None
    damaged = []
    for part, layout, ok in zip(parts, layouts, ledger_like):
        if not ok:
            damaged.append(Damaged(part.path, "not a part of a telescope ledger (its columns are not the ledger's)"))
        elif layout != best:
            damaged.append(Damaged(
                part.path, "its columns do not match the rest of this sweep's ledger (another sweep's part copied in?)"
            ))
    schema = next((p.schema for p, layout in zip(parts, layouts) if layout == best), None)
    return schema, damaged


def check_curves(part: Part) -> Part:
    """`part` itself if it has the curves table's columns; Damaged if not."""
    if _columns(part.schema) != _columns(CURVE_SCHEMA):
        raise Damaged(part.path, "its columns are not those of a curves part (another table's file copied in?)")
    return part
