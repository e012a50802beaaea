"""telescope's exceptions, as a tree a caller can catch precisely.

    TelescopeError            anything telescope itself reports as an outcome, not a bug
    +-- ConfigError           bad input: names the dotted field and the fix (CLI: one line, exit 2)
    +-- LedgerError           a sweep directory that is unreadable or inconsistent (CLI: exit 2)
    +-- NoOptimumError        a level has no optimum to follow (every trial diverged or failed)
    +-- SweepStopped          a sweep that cannot go on; carries the NoOptimumError's reason (exit 3)

    Terminated (a BaseException, like KeyboardInterrupt)   SIGTERM arrived (CLI: one line, exit 143)

Programmer errors (a caller breaking a function's contract) stay ValueError / TypeError and keep
their tracebacks: they are bugs to fix, not messages for a user.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from types import FrameType


class TelescopeError(Exception):
    """Base of every error telescope raises on purpose. `str(err)` is one line for the user."""


class ConfigError(TelescopeError, ValueError):
    """Bad user input: names the offending field and says how to fix it.

    `str(err)` is the one line the CLI prints, e.g.
    "width: must be a multiple of head_dim (32); got 48 — pick 32, 64, 96, ...".
    A ValueError too, so code that validates with `except ValueError` keeps working.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class LedgerError(TelescopeError):
    """A sweep directory whose files cannot be read or do not agree: `path` names the file."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class NoOptimumError(TelescopeError):
    """The rule found no optimum at a level: every point's trials diverged or failed.

    `errors` counts the trials' own error lines (most common first), so the message can name
    the real cause; only when the trials diverged (rather than failed) are the ranges to blame.
    """

    def __init__(self, level: int, width: int, *, diverged: int = 0, failed: int = 0,
                 errors: Mapping[str, int] | None = None):
        self.level, self.width = level, width
        self.diverged, self.failed = diverged, failed
        self.errors = dict(errors or {})
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"every trial at level {self.level} (width {self.width})"
        causes = "; ".join(f"{n}x {text}" for text, n in list(self.errors.items())[:3])
        if self.failed and not self.diverged:
            return (f"{head} failed, so there is no optimum to follow: {causes or 'no error recorded'}; "
                    "fix that cause and run the sweep again in a new directory")
        tally = f"{self.diverged} diverged" + (f", {self.failed} failed ({causes})" if self.failed else "")
        return (f"{head} diverged or failed ({tally}), so there is no optimum to follow: lower the "
                "learning-rate range (e.g. axes.lr.high) or the init scale")


class SweepStopped(TelescopeError):
    """The sweep stopped short of its last level; `reason` says why and what to change."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"sweep {name!r} cannot go on: {reason}")


class Terminated(BaseException):
    """SIGTERM (`kill`, a Kubernetes eviction, a scheduler's preemption) as an exception.

    It unwinds like KeyboardInterrupt, so every `finally`, context manager and
    `except BaseException` cleanup runs: the dispatcher cancels its running trials, Ray stops,
    the sweep lock is released, and the CLI exits 143 with one line. A BaseException so that
    `except Exception` handlers (a trial's, a library's) do not swallow it.
    """

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> None:
        """Signal handler for `signal.signal`: raise Terminated for the first signal, and ignore
        repeats, so that a second `kill` cannot cut short the cleanup the first one started."""
        signal.signal(signum, signal.SIG_IGN)
        raise cls(signum)
