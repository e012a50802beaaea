"""Live progress of a sweep: per level, done / running / failed / diverged and the best so far.

"best" is the lowest mean loss over seeds among the points with every seed recorded, with the
seed spread beside it, as `status`, `export` and the report count it (telescope.core.noise).

On a terminal the current level's line is redrawn in place; elsewhere (CI logs, `nohup`) a line is
printed at most every `interval_s` seconds and when a level ends, so logs stay readable.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from telescope.core.noise import PointLoss, best_point
from telescope.core.numbers import format_point


@dataclass
class LevelTally:
    level: int
    width: int
    total: int
    done: int = 0  # finished in this run or earlier (any status)
    running: int = 0
    failed: int = 0
    diverged: int = 0
    n_seeds: int = 1  # a point counts towards "best" once this many of its seeds are recorded
    losses: dict[tuple[tuple[str, float], ...], list[float]] = field(default_factory=dict)

    def record(self, point: dict[str, float], loss: float) -> None:
        self.losses.setdefault(tuple(sorted(point.items())), []).append(loss)

    @property
    def best(self) -> tuple[dict[str, float], PointLoss] | None:
        found = best_point(self.losses, self.n_seeds)
        return None if found is None else (dict(found[0]), found[1])

    @property
    def best_loss(self) -> float:
        """The best point's mean loss over seeds (inf while no point has every seed)."""
        found = self.best
        return math.inf if found is None else found[1].mean

    def line(self) -> str:
        found = self.best
        best = "-" if found is None else found[1].text()
        at = format_point(found[0], digits=3) if found else ""
        return (
            f"level {self.level} width {self.width:>5}: {self.done:>3}/{self.total} done, "
            f"{self.running} running, {self.failed} failed, {self.diverged} diverged, best {best}"
            + (f" at {at}" if at else "")
        )


class Progress:
    def __init__(self, stream: TextIO | None = None, interval_s: float = 10.0, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval_s = interval_s
        self.quiet = quiet
        self.tally: LevelTally | None = None
        self._last_print = 0.0

    def start_level(self, level: int, width: int, total: int, n_seeds: int = 1) -> None:
        self.tally = LevelTally(level, width, total, n_seeds=n_seeds)
        self._draw(force=True)

    def grow_level(self, extra: int) -> None:
        """The level gained points (edge widening or an Optuna batch)."""
        assert self.tally is not None
        self.tally.total += extra
        self._draw(force=True)

    def record(self, status: str, loss: float, point: dict[str, float], *, was_running: bool) -> None:
        t = self.tally
        assert t is not None
        t.done += 1
        if was_running:
            t.running -= 1
        if status == "failed":
            t.failed += 1
        elif status == "diverged":
            t.diverged += 1
        t.record(point, loss)  # a diverged or failed seed (loss inf) makes its point infinitely bad
        self._draw()

    def submitted(self, n: int = 1) -> None:
        assert self.tally is not None
        self.tally.running += n
        self._draw()

    def note(self, text: str) -> None:
        self._end_live_line()
        self._write(text + "\n")

    def warn(self, text: str) -> None:
        """A line the user must see even with --quiet (e.g. a damaged file set aside)."""
        self._end_live_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end_level(self, summary: str) -> None:
        self._draw(force=True)
        self._end_live_line()
        self._write(f"  -> {summary}\n")
        self.tally = None

    # -- drawing -------------------------------------------------------------------------------
    def _draw(self, force: bool = False) -> None:
        if self.tally is None or self.quiet:
            return
        now = time.monotonic()
        if self.live:
            self._write("\r\x1b[2K" + self.tally.line())
        elif force or now - self._last_print >= self.interval_s:
            self._write(self.tally.line() + "\n")
            self._last_print = now

    def _end_live_line(self) -> None:
        if self.live and self.tally is not None and not self.quiet:
            self._write("\n")

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text)
            self.stream.flush()
