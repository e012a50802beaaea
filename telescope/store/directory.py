"""Sweep directories: create one for a spec, refuse one that belongs to another, open one to read.

    DIR/spec.toml          the sweep spec, as the user wrote it
    DIR/sweep.json         {"format", "kind", "spec_fingerprint", "name", "created_at", "telescope_version"}
                           kind: "sweep" (telescope run), "compare" (telescope compare) or
                           "verify" (telescope verify, in a sweep's DIR/verify/<width>/)
                           devices (sweeps): what device = "auto" resolved to, one per level
                           ("cpu" or "cuda"); absent in directories made before it was recorded
    DIR/trials.parquet/    the ledger (telescope.store.ledger)
    DIR/curves.parquet/
    DIR/.lock              flock'ed by the controller that writes (telescope.store.lock)

sweep.json is written last, so its presence marks a directory whose creation finished. A
sweep.json or spec.toml that cannot be read or makes no sense is a LedgerError naming the file;
a directory that is not ours, or of another spec or kind, is a ConfigError (the --out to change).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import telescope
from telescope.core.contract import DEVICES
from telescope.errors import ConfigError, LedgerError
from telescope.store.files import TMP_NAME, atomic_write, fsync_dir
from telescope.store.ledger import Ledger

FORMAT = 1
SPEC_FILE = "spec.toml"
META_FILE = "sweep.json"
LOCK_FILE = ".lock"
RESOLVED_DEVICES = tuple(d for d in DEVICES if d != "auto")
# what writes each kind
KINDS = {"sweep": "telescope run", "compare": "telescope compare", "verify": "telescope verify"}


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _state(path: Path) -> str:
    """absent | fresh (empty, or a creation cut short under our lock) | sweep | file | foreign.

    "sweep" means any telescope directory (its sweep.json says which kind)."""
    if not path.exists():
        return "absent"
    if not path.is_dir():
        return "file"
    names = {n for n in os.listdir(path) if not TMP_NAME.match(n)}
    if META_FILE in names:
        return "sweep"
    # sweep.json is written last when a directory is created; a .lock proves telescope made it.
    if names <= {LOCK_FILE} or (LOCK_FILE in names and names <= {LOCK_FILE, SPEC_FILE}):
        return "fresh"
    return "foreign"


def refuse_unusable(path: Path) -> str:
    state = _state(path)
    if state == "file":
        raise ConfigError(str(path), "is a file, not a sweep directory; give a directory for --out")
    if state == "foreign":
        raise ConfigError(
            str(path),
            "exists and is not a sweep directory (no sweep.json); use a new or empty directory for --out",
        )
    return state


def _read_text(file: Path, remedy: str) -> str:
    """A file of a sweep directory as text, or a LedgerError naming it and saying what to do."""
    try:
        return file.read_text(encoding="utf-8")
    except OSError as err:
        raise LedgerError(str(file), f"is unreadable ({err.strerror or err}); {remedy}") from None
    except UnicodeDecodeError:
        raise LedgerError(str(file), f"is unreadable (not UTF-8 text); {remedy}") from None


def _read_meta(path: Path) -> dict[str, Any]:
    file, remedy = path / META_FILE, "restore it from a copy or start a new sweep"
    try:
        meta = json.loads(_read_text(file, remedy))
    except json.JSONDecodeError as err:
        raise LedgerError(str(file), f"is unreadable ({err}); {remedy}") from None
    wanted = {"format": int, "spec_fingerprint": str, "name": str, "created_at": str, "telescope_version": str}
    bad = [k for k, t in wanted.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), t)]
    if bad:
        raise LedgerError(str(file), f"is corrupt (bad or missing {', '.join(bad)}); {remedy}")
    if meta["format"] != FORMAT:
        raise LedgerError(
            str(file), f"has format {meta['format']}; telescope {telescope.__version__} reads format {FORMAT}"
        )
    if "kind" not in meta:  # written before the kind was stored: only a compare study's spec says so
        meta["kind"] = "compare" if _spec_says_compare(path) else "sweep"
    if meta["kind"] not in KINDS:
        raise LedgerError(str(file), f"has unknown kind {meta['kind']!r}; expected {', '.join(KINDS)}; {remedy}")
    devices = meta.get("devices")
    if devices is not None and (not isinstance(devices, list) or not devices
                                or not all(d in RESOLVED_DEVICES for d in devices)):
        raise LedgerError(str(file), f"is corrupt (devices must be a list of {', '.join(RESOLVED_DEVICES)}; "
                                     f"got {devices!r}); {remedy}")
    return meta


def _spec_says_compare(path: Path) -> bool:
    try:
        return tomllib.loads((path / SPEC_FILE).read_text(encoding="utf-8")).get("kind") == "compare"
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def directory_kind(path: str | os.PathLike[str]) -> str | None:
    """The stored kind of a telescope directory ("sweep" or "compare"), or None if `path` is not one."""
    path = Path(path)
    return _read_meta(path)["kind"] if _state(path) == "sweep" else None


def _refuse_other_kind(path: Path, meta: dict[str, Any], kind: str) -> None:
    if meta["kind"] != kind:
        raise ConfigError(
            str(path),
            f"is a {meta['kind']} directory (made by `{KINDS[meta['kind']]}`), not a {kind} directory; "
            f"use a new --out, or a command for {meta['kind']} directories",
        )


def write_spec(path: str | os.PathLike[str], spec_text: str) -> None:
    """Store the sweep spec's text as DIR/spec.toml, atomically."""
    atomic_write(Path(path) / SPEC_FILE, spec_text)


def check_sweep_dir(path: str | os.PathLike[str], spec_fingerprint: str, kind: str = "sweep") -> str:
    """Read-only: whether `run` may use `path` for this spec ("absent", "sweep", ...), or a
    ConfigError (a LedgerError if its sweep.json is damaged). `run` calls it before taking the
    lock, so a refusal leaves every byte alone."""
    path = Path(path)
    state = refuse_unusable(path)
    if state == "sweep":
        meta = _read_meta(path)
        _refuse_other_kind(path, meta, kind)
        if meta["spec_fingerprint"] != spec_fingerprint:
            raise ConfigError(
                str(path),
                f"holds a ledger from another spec (fingerprint {meta['spec_fingerprint']}, this spec "
                f"{spec_fingerprint}); use a new --out or `telescope resume {path}`",
            )
    return state


def open_sweep_dir(
    path: str | os.PathLike[str], spec_text: str, spec_fingerprint: str, name: str, kind: str = "sweep",
    devices: Sequence[str] | None = None,
) -> Ledger:
    """The ledger `run` writes to: a new sweep directory, or this spec's existing one.

    Reusing a directory of the same spec makes re-running a no-op for finished trials. Refuses
    (ConfigError, no file touched) a directory of another spec or one that is not a sweep
    directory. `devices` (one per level) are recorded in a new directory's sweep.json; an existing
    directory keeps those it recorded. Call it holding SweepLock(path).
    """
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    state = check_sweep_dir(path, spec_fingerprint, kind)
    if state == "sweep":
        if not (path / SPEC_FILE).is_file():
            write_spec(path, spec_text)  # same fingerprint: restoring the copy loses nothing
        return Ledger(path)

    path.mkdir(parents=True, exist_ok=True)
    write_spec(path, spec_text)
    meta = {
        "format": FORMAT, "kind": kind, "spec_fingerprint": spec_fingerprint, "name": name,
        "created_at": utc_now(), "telescope_version": telescope.__version__,
    }
    if devices is not None:
        meta["devices"] = list(devices)
    atomic_write(path / META_FILE, json.dumps(meta, indent=2) + "\n")  # last: marks the dir complete
    if state == "absent":
        fsync_dir(path.parent)
    return Ledger(path)


def load_sweep_dir(path: str | os.PathLike[str], kind: str | None = "sweep") -> tuple[Ledger, str, dict[str, Any]]:
    """An existing directory of `kind` (any kind if None), for resume/status/export:
    (ledger, spec text, sweep.json)."""
    path = Path(path)
    hint = "give the --out directory of a `telescope run`"
    if not path.exists():
        raise ConfigError(str(path), f"does not exist; {hint}")
    if _state(path) != "sweep":
        raise ConfigError(str(path), f"is not a sweep directory (no {META_FILE}); {hint}")
    meta = _read_meta(path)
    if kind is not None:
        _refuse_other_kind(path, meta, kind)
    spec_text = _read_text(path / SPEC_FILE, "restore the sweep's spec there from a copy")
    return Ledger(path), spec_text, meta
