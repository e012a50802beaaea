"""The user's own data loader: bytes of the Python standard library's source (present on every
machine, nothing downloaded), split by file into train and validation."""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path

import numpy as np
import torch

MAX_BYTES = 2 << 20


@functools.cache
def corpus(val_frac: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) byte arrays; cached, so a worker reads the files once for all its trials."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    chunks, total = [], 0
    for f in files:
        chunks.append(f.read_bytes())
        total += len(chunks[-1])
        if total > MAX_BYTES:
            break
    n_val = max(1, int(len(chunks) * val_frac))
    as_array = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8)  # noqa: E731
    return as_array(chunks[n_val:]), as_array(chunks[:n_val])


def batches(data: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator):
    """Endless random windows of seq_len + 1 bytes: (inputs, next-byte targets)."""
    tokens = torch.from_numpy(data.astype(np.int64))
    while True:
        starts = torch.randint(len(tokens) - seq_len - 1, (batch_size,), generator=generator)
        window = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]
