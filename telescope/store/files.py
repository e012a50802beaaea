"""Durable files: a write that a crash leaves either whole or not there at all.

tmp file -> fsync -> rename -> fsync of the directory. Temporary names start with "." and end in
".<8 hex>.tmp", so pyarrow and pandas skip them and a later compaction can sweep them up.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    payload = data.encode() if isinstance(data, str) else data
    _atomic(Path(path), lambda f: f.write(payload))


def write_table(table: pa.Table, path: Path) -> None:
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
    fsync_dir(path.parent)  # makes the rename itself durable


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
