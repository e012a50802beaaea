"""Batches for trials: the corpus (telescope.core.corpus) cut into torch tensors.

`train_batches` samples random windows with a seeded numpy Generator (same seed, same batches);
`val_batches` takes fixed windows spread evenly over the val split, so every trial of a sweep is
scored on exactly the same tokens.

Every batch's ids are checked against the vocabulary as it is cut (the rows' max, cheap beside a
step): the corpus loader checks big token files only in sampled blocks, and an id the embedding
has no row for must stop the trial with a ConfigError naming vocab_size, not an index error.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from telescope.core.corpus import Corpus, check_fits, check_token_ids
from telescope.errors import ConfigError


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(name, f"must be a positive whole number; got {value!r}")


class _Split:
    """One split's tokens, with what a bad id's error names; `vocab_size` None when the dtype
    cannot hold an id outside the vocabulary (bytes), so no batch needs checking."""

    def __init__(self, corpus: Corpus, split: str):
        self.tokens: np.ndarray = getattr(corpus, split)
        self.name = f"{corpus.name} ({split} split)"
        fits = np.iinfo(self.tokens.dtype).max < corpus.vocab_size
        self.vocab_size: int | None = None if fits else corpus.vocab_size


def _windows(split: _Split, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows of seq_len + 1 tokens in one fancy-indexing pass; y is x shifted by one."""
    rows = split.tokens[starts[:, None] + np.arange(seq_len + 1)]
    if split.vocab_size is not None:
        check_token_ids(split.name, rows, split.vocab_size)
    rows = torch.from_numpy(rows.astype(np.int64))
    return rows[:, :-1], rows[:, 1:]


def train_batches(
    corpus: Corpus, batch_size: int, seq_len: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random (x, y) int64 batches of shape (batch_size, seq_len); same seed, same batches."""
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError("seed", f"must be a whole number >= 0; got {seed!r}")
    check_fits(corpus, "train", corpus.train, seq_len)
    return _train_stream(_Split(corpus, "train"), batch_size, seq_len, seed)


def _train_stream(
    split: _Split, batch_size: int, seq_len: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # a generator of its own so the checks above run at the call, not at the first next()
    rng = np.random.default_rng(seed)
    n_starts = len(split.tokens) - seq_len  # every start with seq_len + 1 tokens after it
    while True:
        yield _windows(split, rng.integers(0, n_starts, size=batch_size), seq_len)


def val_batches(
    corpus: Corpus, batch_size: int, seq_len: int, n_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed (x, y) batches from windows spread evenly over the val split, independent of any seed."""
    _check_positive(batch_size=batch_size, seq_len=seq_len, n_batches=n_batches)
    check_fits(corpus, "val", corpus.val, seq_len)
    starts = np.linspace(0, len(corpus.val) - seq_len - 1, batch_size * n_batches).round().astype(np.int64)
    split = _Split(corpus, "val")
    return [_windows(split, chunk, seq_len) for chunk in starts.reshape(n_batches, batch_size)]
