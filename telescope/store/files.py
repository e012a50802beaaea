"""Durable files: a write that a crash leaves either whole or not there at all.

tmp file -> fsync -> rename -> fsync of the directory. Temporary names start with "." and end in
".<8 hex>.tmp", so pyarrow and pandas skip them and a later compaction can sweep them up.
"""

from __future__ import annotations

import itertools
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
    # Page checksums let a reader tell a damaged page from data (telescope.store.parts verifies
    # them); without them a flipped bit inside a page often reads back as a wrong value.
    _atomic(path, lambda f: pq.write_table(table, f, write_page_checksum=True))


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


def move_into(src: Path, directory: Path, name: str) -> Path:
    """Move `src` into `directory` as `name` (or `STEM.1.SUFFIX`, `STEM.2.SUFFIX`, ... if that is
    taken) and return where it went; never replaces a file, and is durable once it returns.

    The caller holds SweepLock, so nothing else creates names in `directory` between the check
    and the rename (os.link would refuse a taken name by itself, but not every file system has
    hard links).
    """
    if not directory.is_dir():
        directory.mkdir()
        fsync_dir(directory.parent)
    stem, suffix = os.path.splitext(name)
    for n in itertools.count():
        target = directory / (name if n == 0 else f"{stem}.{n}{suffix}")
        if not os.path.lexists(target):
            break
    os.rename(src, target)
    fsync_dir(directory)
    fsync_dir(src.parent)
    return target


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
