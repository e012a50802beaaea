"""Token files: llm.c's headered .bin beside nanoGPT's raw one, and ids checked without reading a
big file whole (sampled blocks at load, every batch as it is cut). Big files here are sparse: a
few KB on disk whatever their length."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import pytest
import torch

from telescope.core import corpus as corpus_module
from telescope.core.corpus import (
    FULL_HASH_BYTES,
    HEADER_BYTES,
    Corpus,
    load_corpus,
    sampled_blocks,
    unigram_entropy,
)
from telescope.errors import ConfigError
from telescope.train.data import train_batches, val_batches

torch.set_num_threads(1)

GPT2 = (20240520, 1, "<u2")  # llm.c's magic, version and token dtype for GPT-2 tokens
LLAMA3 = (20240801, 7, "<u4")


@pytest.fixture(autouse=True)
def fresh_cache():
    corpus_module._load_corpus_cached.cache_clear()  # a path rewritten by a test must be read again
    yield
    corpus_module._load_corpus_cached.cache_clear()


def write_headered(path: Path, tokens: np.ndarray, fmt=GPT2, *, version: int | None = None,
                   count: int | None = None) -> Path:
    """An llm.c token file (dev/data/data_common.py's write_datafile), with header fields overridable."""
    magic, expected_version, dtype = fmt
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, expected_version if version is None else version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + tokens.astype(dtype).tobytes())
    return path


def sparse_file(path: Path, n_tokens: int, dtype: str, ids: dict[int, int], fmt=None) -> Path:
    """`n_tokens` zero tokens on disk as a hole, the token at each position of `ids` set; an llm.c
    header first when `fmt` is given."""
    itemsize = np.dtype(dtype).itemsize
    offset = HEADER_BYTES if fmt else 0
    with path.open("wb") as f:
        f.truncate(offset + n_tokens * itemsize)
        if fmt:
            f.write(np.array([fmt[0], fmt[1], n_tokens] + [0] * 253, dtype="<i4").tobytes())
        for position, value in ids.items():
            f.seek(offset + position * itemsize)
            f.write(np.array([value], dtype=dtype).tobytes())
    assert path.stat().st_blocks * 512 < 2**20  # stayed sparse
    return path


def page_faults() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def sampled_spans(n_tokens: int, itemsize: int) -> list[range]:
    """The positions the load-time check of a split of `n_tokens` reads, block by block."""
    tokens = np.zeros(n_tokens, dtype=f"u{itemsize}")  # calloc'd: its untouched pages cost nothing
    base = tokens.__array_interface__["data"][0]
    starts = [(block.__array_interface__["data"][0] - base) // itemsize for block in sampled_blocks(tokens)]
    return [range(start, start + len(block)) for start, block in zip(starts, sampled_blocks(tokens))]


def sampled(n_tokens: int, itemsize: int, position: int) -> bool:
    return any(position in span for span in sampled_spans(n_tokens, itemsize))


# ---------------------------------------------------------------------------- the two layouts


@pytest.mark.parametrize("fmt, vocab_size", [(GPT2, 50304), (LLAMA3, 128256)])
def test_headered_and_raw_files_load_the_same_tokens(tmp_path, fmt, vocab_size):
    tokens = np.random.default_rng(0).integers(0, vocab_size, size=6000)
    raw = tmp_path / "raw.bin"
    tokens.astype("<u2" if vocab_size <= 2**16 else "<u4").tofile(raw)
    headered = write_headered(tmp_path / "headered.bin", tokens, fmt)
    a = load_corpus(str(raw), vocab_size=vocab_size, val_frac=0.1)
    b = load_corpus(str(headered), vocab_size=vocab_size, val_frac=0.1)
    assert isinstance(b.train, np.memmap) and b.train.dtype == np.dtype(fmt[2])
    assert np.array_equal(a.train, tokens[:5400]) and np.array_equal(a.val, tokens[5400:])
    assert np.array_equal(b.train, a.train) and np.array_equal(b.val, a.val)
    assert b.fingerprint == a.fingerprint  # the same tokens, whatever the layout
    (xa, ya), (xb, yb) = next(train_batches(a, 4, 32, 3)), next(train_batches(b, 4, 32, 3))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_headered_train_and_val_directory(tmp_path):
    train = np.arange(3000) % 700
    val = (np.arange(500) * 7) % 700
    write_headered(tmp_path / "train.bin", train)
    write_headered(tmp_path / "val.bin", val)
    corpus = load_corpus(str(tmp_path), vocab_size=700)
    assert np.array_equal(corpus.train, train) and np.array_equal(corpus.val, val)
    (x, _), = val_batches(corpus, 1, 10, 1)
    assert x[0].tolist() == val[:10].tolist()


# ---------------------------------------------------------------------------- bad headers


def load_error(path: Path, vocab_size: int = 50304) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_corpus(str(path), vocab_size=vocab_size)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{err.value.field}: ")
    return err.value


def test_header_count_disagreeing_with_the_file_size_is_a_truncated_file(tmp_path):
    tokens = np.arange(4000) % 1000
    path = write_headered(tmp_path / "t.bin", tokens)
    path.write_bytes(path.read_bytes()[:-100])  # a download cut short
    err = load_error(path)
    assert err.field == "data" and "truncated" in str(err) and "4000" in str(err)
    write_headered(path, tokens, count=3000)  # more bytes than the header says
    assert load_error(path).field == "data"
    write_headered(path, tokens, count=-1)
    assert load_error(path).field == "data"
    path.write_bytes(np.array([GPT2[0], 1, 10], dtype="<i4").tobytes())  # not even a whole header
    err = load_error(path)
    assert err.field == "data" and "truncated" in str(err)


def test_unknown_header_version_fails_in_one_line(tmp_path):
    path = write_headered(tmp_path / "t.bin", np.arange(4000) % 1000, version=2)
    err = load_error(path)
    assert err.field == "data" and "version 2" in str(err) and "version 1" in str(err)
    # llama-3's magic goes with version 7 only
    write_headered(path, np.arange(4000) % 1000, LLAMA3, version=1)
    assert "version 7" in str(load_error(path, vocab_size=128256))


def test_unknown_magic_is_read_as_raw_tokens(tmp_path):
    tokens = np.arange(4000) % 1000
    path = write_headered(tmp_path / "t.bin", tokens, (20240521, 1, "<u2"))
    corpus = load_corpus(str(path), vocab_size=2**16, val_frac=0.1)  # no header known: every byte is a token
    n = (HEADER_BYTES + 2 * len(tokens)) // 2
    assert len(corpus.train) + len(corpus.val) == n
    assert corpus.train[:4].tolist() == [20240521 & 0xFFFF, 20240521 >> 16, 1, 0]
    assert np.array_equal(corpus.train[HEADER_BYTES // 2:], tokens[: len(corpus.train) - HEADER_BYTES // 2])


def test_a_raw_file_starting_with_the_magic_fails_rather_than_being_misread(tmp_path):
    # the ambiguity the module doc describes: a raw uint16 file whose first ids are the magic's halves
    tokens = np.random.default_rng(1).integers(0, 2**16, size=4000)
    tokens[:2] = GPT2[0] & 0xFFFF, GPT2[0] >> 16
    tokens.astype("<u2").tofile(tmp_path / "t.bin")
    assert load_error(tmp_path / "t.bin", vocab_size=2**16).field == "data"


# ---------------------------------------------------------------------------- ids, without a full read


def test_load_reads_only_sampled_blocks_of_a_big_file(tmp_path):
    # counted in page faults of this process: reading a memory-mapped page faults it in (the
    # kernel maps a run of cached pages per fault, so faults count reads, not pages)
    n = 128 * 2**20  # 256 MiB of uint16
    assert 2 * n == 4 * FULL_HASH_BYTES
    path = sparse_file(tmp_path / "train.bin", n, "<u2", {0: 7, n - 1: 9})
    write_headered(tmp_path / "val.bin", np.arange(5000) % 1000)
    with path.open("rb") as f:  # the whole file in the page cache: both reads below find it there
        while f.read(2**24):
            pass
    before = page_faults()
    assert int(np.memmap(path, dtype="<u2", mode="r").max()) == 9  # what the loader did before
    full_faults = page_faults() - before
    before = page_faults()
    corpus = load_corpus(str(tmp_path), vocab_size=1000)
    load_faults = page_faults() - before
    print(f"page faults: load {load_faults}, one full read {full_faults}")
    assert len(sampled_blocks(corpus.train)) == corpus_module.HASH_BLOCKS
    assert load_faults < full_faults / 3


def test_a_bad_id_in_a_sampled_block_of_a_big_file_fails_at_load(tmp_path):
    n = 40 * 2**20  # 80 MiB
    spans = sampled_spans(n, 2)
    assert len(spans) == corpus_module.HASH_BLOCKS and spans[0][0] == 0 and spans[-1][-1] == n - 1
    for position in (0, spans[31][100], n - 1):  # in the first, a middle and the last sampled block
        sparse_file(tmp_path / "big.bin", n, "<u2", {position: 1234}, fmt=GPT2)
        corpus_module._load_corpus_cached.cache_clear()
        err = load_error(tmp_path / "big.bin", vocab_size=1000)
        assert err.field == "vocab_size" and "token id 1234" in str(err)


def test_a_bad_id_between_sampled_blocks_is_caught_by_the_batch_that_holds_it(tmp_path):
    n, seq_len = 40 * 2**20, 32
    starts = np.linspace(0, n - seq_len - 1, 4 * 3).round().astype(np.int64)  # val_batches' windows (4 x 3)
    position = next(int(s) + 3 for s in starts if not sampled(n, 2, int(s) + 3))
    sparse_file(tmp_path / "val.bin", n, "<u2", {position: 5000}, fmt=GPT2)
    write_headered(tmp_path / "train.bin", np.arange(5000) % 1000)
    corpus = load_corpus(str(tmp_path), vocab_size=1000)  # the sampled check cannot see it
    assert int(corpus.val[position]) == 5000
    with pytest.raises(ConfigError) as err:
        val_batches(corpus, 4, seq_len, 3)
    assert err.value.field == "vocab_size" and "token id 5000" in str(err.value) and "val split" in str(err.value)
    with pytest.raises(ConfigError) as err:
        unigram_entropy(corpus)  # reads the split whole, so it checks it too
    assert err.value.field == "vocab_size"


def test_every_train_batch_is_checked(tmp_path):
    # a corpus as a loader that sampled past the bad ids would hand over: ids 0..99, then 150s
    train = np.concatenate([np.arange(2000) % 100, np.full(2000, 150)]).astype(np.uint16)
    corpus = Corpus("handmade", 100, train, np.arange(200, dtype=np.uint16) % 100, "x")
    batches = train_batches(corpus, 4, 16, 0)
    with pytest.raises(ConfigError) as err:
        for _ in range(50):  # every batch holds a row from the bad half with near certainty
            next(batches)
    assert err.value.field == "vocab_size" and "token id 150" in str(err.value) and "train split" in str(err.value)
    clean = Corpus("handmade", 100, train[:2000], train[:200], "x")
    x, y = next(train_batches(clean, 4, 16, 0))
    assert int(torch.cat([x, y]).max()) < 100
