import math
import os
import time

import numpy as np
import pytest
import torch

from telescope.core.contract import BUILTIN_CORPUS
from telescope.core.corpus import Corpus, load_corpus, token_dtype, unigram_entropy
from telescope.train.data import train_batches, val_batches
from telescope.errors import ConfigError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stdlib() -> Corpus:
    return load_corpus(BUILTIN_CORPUS)


def contains(tokens: np.ndarray, needle: bytes) -> bool:
    return needle in np.asarray(tokens).tobytes()


def write_text(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# ---------------------------------------------------------------------------- builtin corpus


def test_builtin_corpus_is_python_source(stdlib):
    assert stdlib.name == BUILTIN_CORPUS
    assert stdlib.vocab_size == 256
    assert stdlib.train.dtype == np.uint8 and stdlib.val.dtype == np.uint8
    n = len(stdlib.train) + len(stdlib.val)
    assert 2 * 2**20 < n <= 8 * 2**20
    assert 0.03 < len(stdlib.val) / n < 0.08  # ~val_frac of the bytes
    for split in (stdlib.train, stdlib.val):
        assert contains(split, b"def ") and contains(split, b"import ")


def test_builtin_corpus_leaves_out_tests_and_third_party_code():
    from telescope.core import corpus as data

    names = list(data.stdlib_files())
    assert names == sorted(names) and "argparse.py" in names and "json/decoder.py" in names
    parts = {part for name in names for part in name.split("/")[:-1]}
    assert not parts & {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    assert all(name.endswith(".py") and not name.startswith("_sysconfigdata") for name in names)


def test_builtin_corpus_is_cached_and_fingerprint_stable(stdlib):
    assert load_corpus(BUILTIN_CORPUS) is stdlib
    assert len(stdlib.fingerprint) == 16
    from telescope.core import corpus as data

    data._load_corpus_cached.cache_clear()
    again = load_corpus(BUILTIN_CORPUS)
    assert again is not stdlib
    assert again.fingerprint == stdlib.fingerprint
    assert np.array_equal(again.val, stdlib.val)


def test_builtin_split_is_by_file(stdlib):
    # every val file appears whole and only in val: its first 200 bytes are not in train
    from telescope.core import corpus as data

    files = data.stdlib_files()
    blobs = {rel: path.read_bytes() for rel, path in files.items()}
    val_names = data.val_files(blobs, 0.05)
    assert val_names and len(val_names) < len(files)
    val_bytes, train_bytes = stdlib.val.tobytes(), stdlib.train.tobytes()
    assert len(val_bytes) == sum(len(blobs[r]) for r in val_names)
    for rel in sorted(val_names)[:5]:
        assert blobs[rel] in val_bytes
        assert blobs[rel][:200] not in train_bytes


def test_builtin_unigram_entropy(stdlib):
    h = unigram_entropy(stdlib)
    print(f"builtin unigram entropy: {h:.3f} nats/token")
    assert 2.8 < h < 5.5
    assert h < math.log(256)


def test_builtin_loads_fast():
    from telescope.core import corpus as data

    data._load_corpus_cached.cache_clear()
    t = time.perf_counter()
    load_corpus(BUILTIN_CORPUS)
    assert time.perf_counter() - t < 2.0


# ---------------------------------------------------------------------------- batches


def test_train_batches_deterministic_shifted_and_seeded(stdlib):
    a = train_batches(stdlib, batch_size=4, seq_len=32, seed=7)
    b = train_batches(stdlib, batch_size=4, seq_len=32, seed=7)
    c = train_batches(stdlib, batch_size=4, seq_len=32, seed=8)
    for _ in range(3):
        (xa, ya), (xb, yb), (xc, _) = next(a), next(b), next(c)
        assert xa.shape == ya.shape == (4, 32)
        assert xa.dtype == ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)
        assert torch.equal(xa[:, 1:], ya[:, :-1])  # y is x shifted by one
    # every row is a real window of the train split
    train = stdlib.train.tobytes()
    assert bytes(xa[0].tolist()) + bytes([int(ya[0, -1])]) in train


def test_train_batches_cover_the_whole_split(tmp_path):
    # a 10-token corpus with seq_len 4: starts 0..5 all reachable, including the last window
    tokens = np.arange(100, dtype=np.uint16)
    tokens.tofile(tmp_path / "t.bin")
    corpus = load_corpus(str(tmp_path / "t.bin"), vocab_size=100, val_frac=0.9)
    assert len(corpus.train) == 10
    it = train_batches(corpus, 8, 4, 0)
    starts = {int(v) for _ in range(20) for v in next(it)[0][:, 0]}
    assert starts == set(range(6))


def test_train_batch_is_fast(stdlib):
    it = train_batches(stdlib, batch_size=16, seq_len=256, seed=0)
    next(it)
    n = 200
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    per_batch = (time.perf_counter() - t) / n
    print(f"train batch (16, 256): {per_batch * 1e6:.0f} us")
    assert per_batch < 1e-3


def test_val_batches_fixed_and_spread(stdlib):
    a = val_batches(stdlib, batch_size=4, seq_len=64, n_batches=3)
    b = val_batches(stdlib, batch_size=4, seq_len=64, n_batches=3)
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (4, 64) and xa.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
    # the first window starts the split, the last one ends it
    val = torch.from_numpy(stdlib.val.astype(np.int64))
    assert torch.equal(a[0][0][0], val[:64])
    assert torch.equal(a[-1][1][-1], val[-64:])


# ---------------------------------------------------------------------------- text files


def test_text_directory(tmp_path):
    files = {f"sub/doc{i:02d}.txt": f"document {i}\n" * 50 for i in range(40)}
    files[".hidden"] = "never read"
    write_text(tmp_path, files)
    corpus = load_corpus(str(tmp_path), val_frac=0.1)
    assert corpus.vocab_size == 256 and corpus.name == str(tmp_path)
    n = len(corpus.train) + len(corpus.val)
    assert n == sum(len(t) for rel, t in files.items() if rel != ".hidden")
    assert 0.05 < len(corpus.val) / n < 0.2
    # by file: each document lands wholly on one side
    train, val = corpus.train.tobytes(), corpus.val.tobytes()
    for i in range(40):
        line = f"document {i}\n".encode()
        assert (line in train) != (line in val)
    assert load_corpus(str(tmp_path), val_frac=0.1).fingerprint == corpus.fingerprint
    assert load_corpus(str(tmp_path), val_frac=0.3).fingerprint != corpus.fingerprint


def test_text_glob_and_single_file(tmp_path):
    write_text(tmp_path, {"a.txt": "alpha " * 100, "b.txt": "beta " * 100, "c.md": "gamma " * 100})
    corpus = load_corpus(str(tmp_path / "*.txt"), val_frac=0.4)
    both = corpus.train.tobytes() + corpus.val.tobytes()
    assert b"alpha" in both and b"beta" in both and b"gamma" not in both
    single = load_corpus(str(tmp_path / "a.txt"), val_frac=0.1)
    assert len(single.val) == 60 and single.val.tobytes() == (b"alpha " * 100)[-60:]


def test_text_vocab_size_must_cover_bytes(tmp_path):
    write_text(tmp_path, {"a.txt": "hello world\n" * 20})
    assert load_corpus(str(tmp_path / "a.txt"), vocab_size=512).vocab_size == 512
    with pytest.raises(ConfigError) as err:
        load_corpus(str(tmp_path / "a.txt"), vocab_size=100)
    assert err.value.field == "vocab_size"


# ---------------------------------------------------------------------------- token files


@pytest.mark.parametrize("vocab_size", [1000, 70_000])
def test_bin_file_round_trip(tmp_path, vocab_size):
    dtype = token_dtype(vocab_size)
    assert dtype == (np.uint16 if vocab_size <= 65536 else np.uint32)
    tokens = np.random.default_rng(0).integers(0, vocab_size, size=5000).astype(dtype)
    tokens.tofile(tmp_path / "tokens.bin")
    corpus = load_corpus(str(tmp_path / "tokens.bin"), vocab_size=vocab_size, val_frac=0.1)
    assert isinstance(corpus.train, np.memmap)
    assert corpus.vocab_size == vocab_size
    assert np.array_equal(corpus.train, tokens[:4500]) and np.array_equal(corpus.val, tokens[4500:])
    x, y = next(train_batches(corpus, 2, 16, 0))
    assert int(x.max()) < vocab_size and torch.equal(x[:, 1:], y[:, :-1])
    assert 0 < unigram_entropy(corpus) <= math.log(vocab_size)


def test_bin_directory_uses_given_splits(tmp_path):
    train = np.arange(3000, dtype=np.uint16) % 500
    val = (np.arange(700, dtype=np.uint16) * 7) % 500
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    corpus = load_corpus(str(tmp_path), vocab_size=500, val_frac=0.5)  # val_frac ignored
    assert np.array_equal(corpus.train, train) and np.array_equal(corpus.val, val)
    (x, y), = val_batches(corpus, 1, 10, 1)
    assert torch.equal(x[0], torch.from_numpy(val[:10].astype(np.int64)))


# ---------------------------------------------------------------------------- errors


def make_bad(tmp_path, case: str) -> tuple[dict, str]:
    """Build one bad input under tmp_path; return load_corpus kwargs and the field it must blame."""
    if case == "missing path":
        return {"data": str(tmp_path / "nope")}, "data"
    if case == "unknown builtin":
        return {"data": "builtin:wikipedia"}, "data"
    if case == "empty directory":
        (tmp_path / "empty").mkdir()
        return {"data": str(tmp_path / "empty")}, "data"
    if case == "glob matches nothing":
        return {"data": str(tmp_path / "*.nothing")}, "data"
    if case == "empty files":
        write_text(tmp_path, {"a.txt": "", "b.txt": ""})
        return {"data": str(tmp_path)}, "data"
    if case == "not utf-8":
        (tmp_path / "a.txt").write_bytes(b"ok\n" * 100 + b"\xff\xfe\x00")
        return {"data": str(tmp_path / "a.txt")}, "data"
    if case == "unreadable file":
        write_text(tmp_path, {"a.txt": "fine\n" * 100})
        (tmp_path / "b.txt").symlink_to(tmp_path / "dangling")  # unreadable even for root
        return {"data": str(tmp_path)}, "data"
    if case == "bin without vocab_size":
        np.arange(100, dtype=np.uint16).tofile(tmp_path / "t.bin")
        return {"data": str(tmp_path / "t.bin")}, "vocab_size"
    if case == "token id out of vocab":
        np.arange(100, dtype=np.uint16).tofile(tmp_path / "t.bin")
        return {"data": str(tmp_path / "t.bin"), "vocab_size": 50}, "vocab_size"
    if case == "empty bin":
        (tmp_path / "t.bin").write_bytes(b"")
        return {"data": str(tmp_path / "t.bin"), "vocab_size": 100}, "data"
    if case == "ragged bin":
        (tmp_path / "t.bin").write_bytes(b"\x01\x00\x02")
        return {"data": str(tmp_path / "t.bin"), "vocab_size": 100}, "data"
    if case == "train.bin without val.bin":
        np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
        return {"data": str(tmp_path), "vocab_size": 100}, "data"
    if case == "token file among text":
        write_text(tmp_path, {"a.txt": "fine\n" * 100})
        np.arange(100, dtype=np.uint16).tofile(tmp_path / "b.bin")
        return {"data": str(tmp_path / "*")}, "data"
    if case == "one byte of text":
        write_text(tmp_path, {"a.txt": "x"})
        return {"data": str(tmp_path / "a.txt")}, "data"
    if case == "bad val_frac":
        return {"data": BUILTIN_CORPUS, "val_frac": 1.0}, "val_frac"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing path", "unknown builtin", "empty directory", "glob matches nothing", "empty files",
        "not utf-8", "unreadable file", "bin without vocab_size", "token id out of vocab",
        "empty bin", "ragged bin", "train.bin without val.bin", "token file among text",
        "one byte of text", "bad val_frac",
    ],
)
def test_bad_data_raises_config_error(tmp_path, case):
    kwargs, field = make_bad(tmp_path, case)
    with pytest.raises(ConfigError) as err:
        load_corpus(**kwargs)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    print(f"{case}: {err.value}")


def test_unreadable_permissions(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello\n" * 10)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anything: nothing to test
            pytest.skip("file permissions are not enforced for this user")
        with pytest.raises(ConfigError) as err:
            load_corpus(str(path))
        assert err.value.field == "data"
    finally:
        path.chmod(0o644)


def test_corpus_too_small_for_a_window(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "t.bin")
    corpus = load_corpus(str(tmp_path / "t.bin"), vocab_size=100, val_frac=0.1)  # 90 train, 10 val
    next(train_batches(corpus, 2, 89, 0))  # exactly one window fits
    val_batches(corpus, 2, 9, 1)
    with pytest.raises(ConfigError) as err:
        train_batches(corpus, 2, 90, 0)
    assert err.value.field == "seq_len" and "<= 89" in str(err.value)
    with pytest.raises(ConfigError) as err:
        val_batches(corpus, 2, 10, 1)
    assert err.value.field == "seq_len" and "val_frac" in str(err.value)
    with pytest.raises(ConfigError) as err:
        train_batches(corpus, 0, 8, 0)
    assert err.value.field == "batch_size"
    with pytest.raises(ConfigError) as err:
        train_batches(corpus, 2, 8, -1)
    assert err.value.field == "seed"
