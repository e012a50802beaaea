"""What the store's tests share: a trial result to record, and the ways a part file gets damaged."""

from __future__ import annotations

import random
from pathlib import Path

from telescope.core.contract import TrialResult


def result(loss: float = 2.5, status: str = "completed", error: str | None = None) -> TrialResult:
    return TrialResult(
        status=status, final_loss=loss, final_train_loss=loss - 0.1, tokens=2**40, flops=1.5e12,
        wall_time_s=3.25, device="cpu", steps_done=20, n_params=12345,
        train_steps=[0, 10, 20], train_loss=[5.0, 3.0, loss - 0.1], val_steps=[20], val_loss=[loss],
        error=error,
    )


def damage_file(path: Path, how: str) -> None:
    """Damage a part file as the world does: a partial copy, a stray write, a full disk, bad pages."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    elif how == "zero-byte":
        path.write_bytes(b"")
    elif how == "corrupt pages":  # every byte between the magic and the footer: the footer still reads
        footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
        path.write_bytes(data[:4] + bytes(b ^ 0x5A for b in data[4:footer]) + data[footer:])
    else:
        raise ValueError(how)
