"""One writer per sweep directory: an flock that the kernel drops when its holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from telescope.errors import ConfigError
from telescope.store.directory import LOCK_FILE, refuse_unusable, utc_now

_LOCK_ATTEMPTS, _LOCK_RETRY_S = 4, 0.05


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
        refuse_unusable(self.path)  # never litter a directory that is not ours with a .lock
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
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}).encode()
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
