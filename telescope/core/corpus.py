"""Corpora for trials: real text on every machine, nothing downloaded; numpy only, no torch.

`load_corpus(data)` understands three sources, chosen by the `data` string:

1. ``"builtin:stdlib"``: the Python standard library's own ``.py`` sources (tests, IDLE, lib2to3,
   generated tables and site-packages left out), whole files in sorted relative-path order up to
   8 MiB. The paper trained half on Python code; every Python install carries this corpus.
2. Text: a directory (read recursively, hidden names skipped), a glob (``data/*.txt``) or a single
   file. Files must be UTF-8; their raw bytes are the tokens (vocab 256). Everything is read into
   memory, so for corpora of many GB pre-tokenize to a ``.bin`` file instead.
3. Pre-tokenized tokens: a ``.bin`` file, or a directory holding ``train.bin`` and ``val.bin``
   (used as the splits, `val_frac` ignored). `vocab_size` is required. Two layouts, told apart
   by the first four bytes:

   - llm.c / modded-nanogpt: a header of 256 little-endian int32 (magic, version, token count,
     then zeros) before the tokens. Magic 20240520 with version 1 holds uint16 tokens (GPT-2),
     magic 20240801 with version 7 uint32 tokens (llama-3). The count must match the file's size.
   - nanoGPT: raw little-endian token ids, no header; `vocab_size` fixes the dtype, nanoGPT's
     rule: uint16 when vocab_size <= 65536, else uint32.

   Can a raw file pass for a headered one? A raw uint32 file would need a first id of 20240520
   or more, above any real vocabulary. A raw uint16 file is read as headered only when its first
   two ids are (55432, 308) or (55713, 308), the magics' two halves; with vocab_size <= 55432 such
   a file is invalid as raw anyway, so the ambiguity needs a vocabulary above 55432 and that exact
   start. Even then the version and the count must match too, or the file fails in one line
   rather than being misread.

   The files are memory-mapped, never read whole: ids >= vocab_size are looked for in the same
   evenly spaced blocks the fingerprint samples (every id of a split up to FULL_HASH_BYTES), and
   telescope.train.data checks every batch it cuts, so a bad id anywhere stops the trial with a
   ConfigError naming vocab_size, not an index error inside the embedding.

Validation split: text is split *by file* so no file straddles train and val. Files are ranked by
a hash of their relative path and taken into val in that order until it holds ~val_frac of the
bytes; the ranking depends only on names, so it is the same on every machine. A lone file (or files
all too big to fit the val share) falls back to the last val_frac of the bytes, as does a single
``.bin`` file.

No torch here, so `plan` and `run` can check a spec's corpus before Ray starts (`check_corpus`);
telescope.train.data cuts the corpus into torch batches.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telescope.core.contract import BUILTIN_CORPUS, BYTE_VOCAB, check_val_frac, check_vocab_size
from telescope.errors import ConfigError

STDLIB_CAP_BYTES = 8 * 2**20
# Left out of the builtin corpus: test suites (odd encodings, huge data literals), IDLE and
# lib2to3 (deprecated), machine- or build-specific files, and tables that are data, not code.
STDLIB_EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "lib2to3",
    "turtledemo", "ensurepip", "encodings", "pydoc_data",
})
STDLIB_EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")
FULL_HASH_BYTES = 64 * 2**20  # above this, fingerprint and check sampled blocks instead of every byte
HASH_BLOCKS, HASH_BLOCK_BYTES = 64, 2**16
# llm.c's token files (dev/data/data_common.py): 256 int32 of header; magic -> (version, token dtype)
HEADER_BYTES = 256 * 4
HEADER_FORMATS = {20240520: (1, np.uint16), 20240801: (7, np.uint32)}
HINT = f"pass {BUILTIN_CORPUS!r}, a directory or glob of UTF-8 text files, or a .bin token file"


@dataclass(frozen=True, eq=False)  # eq=False: identity equality/hash, arrays don't compare as bools
class Corpus:
    name: str  # "builtin:stdlib" or the path given
    vocab_size: int  # 256 for byte-level text
    train: np.ndarray  # 1-D integer tokens (uint8/uint16/uint32, may be a np.memmap)
    val: np.ndarray  # 1-D integer tokens, held out, deterministic
    fingerprint: str  # short sha256 of content + split: ledgers record which corpus a trial saw


def load_corpus(data: str, vocab_size: int | None = None, val_frac: float = 0.05) -> Corpus:
    """Load (once per process per argument set) the corpus named by `data`; see the module doc."""
    if not isinstance(data, str) or not data:
        raise ConfigError("data", f"must be a non-empty string; got {data!r} — {HINT}")
    check_val_frac(val_frac)
    check_vocab_size(vocab_size)
    if not data.startswith("builtin:"):
        data = os.path.abspath(os.path.expanduser(data))  # the cache must not depend on the cwd
    return _load_corpus_cached(data, vocab_size, float(val_frac))


@functools.lru_cache(maxsize=8)  # a Ray worker runs many trials on the same corpus
def _load_corpus_cached(data: str, vocab_size: int | None, val_frac: float) -> Corpus:
    if data.startswith("builtin:"):
        if data != BUILTIN_CORPUS:
            raise ConfigError("data", f"unknown builtin corpus {data!r}; the only one is {BUILTIN_CORPUS!r}")
        return _text_corpus(data, stdlib_files(), vocab_size, val_frac, check_utf8=False)
    path = Path(data)
    if glob.has_magic(data):
        return _text_corpus(data, _glob_files(data), vocab_size, val_frac)
    if path.is_dir() and (path / "train.bin").exists():
        return _token_dir_corpus(path, vocab_size)
    if path.is_dir():
        return _text_corpus(data, _dir_files(path), vocab_size, val_frac)
    if path.is_file() and path.suffix == ".bin":
        return _token_file_corpus(path, vocab_size, val_frac)
    if path.is_file():
        return _text_corpus(data, {path.name: path}, vocab_size, val_frac)
    raise ConfigError("data", f"no such file or directory: {data}; {HINT}")


# ---------------------------------------------------------------------------- byte-level text


def stdlib_files() -> dict[str, Path]:
    """The builtin corpus: relative posix path -> file, sorted, whole files up to the size cap."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        # pruning in place keeps os.walk out of site-packages (often hundreds of MB)
        dirnames[:] = [
            d for d in dirnames
            if d not in STDLIB_EXCLUDED_DIRS and not d.startswith(STDLIB_EXCLUDED_PREFIXES)
        ]
        for name in filenames:
            if name.endswith(".py") and not name.startswith(STDLIB_EXCLUDED_PREFIXES):
                full = Path(dirpath, name)
                found[full.relative_to(root).as_posix()] = full
    files, total = {}, 0
    for rel in sorted(found):
        size = found[rel].stat().st_size
        if total + size > STDLIB_CAP_BYTES:
            break
        files[rel], total = found[rel], total + size
    if not files:
        raise ConfigError("data", f"no Python sources under {root}; pass a directory of text files instead")
    return files


def _dir_files(root: Path) -> dict[str, Path]:
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .ipynb_checkpoints, ...
        for name in filenames:
            if not name.startswith("."):
                full = Path(dirpath, name)
                files[full.relative_to(root).as_posix()] = full
    if not files:
        raise ConfigError("data", f"directory {root} holds no files; put UTF-8 text files in it or {HINT}")
    return {rel: files[rel] for rel in sorted(files)}


def _glob_files(pattern: str) -> dict[str, Path]:
    matches = [Path(p) for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p)]
    if not matches:
        raise ConfigError("data", f"glob {pattern!r} matches no files; check the pattern, or {HINT}")
    # names relative to the deepest common folder, so the split does not depend on where data lives
    base = Path(os.path.commonpath([str(p.parent) for p in matches]))
    files = {p.relative_to(base).as_posix(): p for p in matches}
    return {rel: files[rel] for rel in sorted(files)}


def _read_text(path: Path, check_utf8: bool) -> bytes:
    if path.suffix == ".bin":
        raise ConfigError("data", f"{path} is a token file; pass it on its own as data, with vocab_size")
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise ConfigError("data", f"cannot read {path}: {err.strerror}; fix it or leave it out") from None
    if check_utf8:
        try:
            blob.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                "data", f"{path} is not UTF-8 text (byte {err.start}); convert it or leave it out"
            ) from None
    return blob


def _text_corpus(
    name: str, files: dict[str, Path], vocab_size: int | None, val_frac: float, check_utf8: bool = True
) -> Corpus:
    if vocab_size is None:
        vocab_size = BYTE_VOCAB
    if vocab_size < BYTE_VOCAB:
        raise ConfigError(
            "vocab_size",
            f"byte-level text needs vocab_size >= {BYTE_VOCAB}; got {vocab_size} — leave it unset",
        )
    blobs = {rel: _read_text(path, check_utf8) for rel, path in files.items()}
    total = sum(len(b) for b in blobs.values())
    if total == 0:
        raise ConfigError("data", f"{name}: every file is empty; add text to it or {HINT}")
    val_names = val_files(blobs, val_frac)
    if val_names:
        train = b"".join(b for rel, b in blobs.items() if rel not in val_names)
        val = b"".join(b for rel, b in blobs.items() if rel in val_names)
    else:  # no whole-file split possible: hold out the tail of the concatenation
        joined = b"".join(blobs.values())
        cut = len(joined) - max(1, round(val_frac * len(joined)))
        train, val = joined[:cut], joined[cut:]
    return _corpus(name, vocab_size, np.frombuffer(train, np.uint8), np.frombuffer(val, np.uint8))


def val_files(blobs: dict[str, bytes], val_frac: float) -> set[str]:
    """Files ranked by a hash of their name go to val until it holds ~val_frac of the bytes.

    A file that would push val past twice its share is skipped, so one big file cannot swallow
    the split. Returns an empty set when no whole-file split leaves both sides non-empty.
    """
    total = sum(len(b) for b in blobs.values())
    target = val_frac * total
    ranked = sorted(blobs, key=lambda rel: hashlib.sha256(rel.encode()).digest())
    chosen, size = set(), 0
    for rel in ranked:
        if size >= target:
            break
        n = len(blobs[rel])
        if n and size + n <= 2 * target:
            chosen.add(rel)
            size += n
    if size == 0 or size == total:
        return set()
    return chosen


# ---------------------------------------------------------------------------- pre-tokenized .bin


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """nanoGPT's rule: ids fit uint16 up to a 65536-token vocabulary, else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _require_vocab(path: Path, vocab_size: int | None) -> int:
    if vocab_size is None:
        raise ConfigError(
            "vocab_size",
            f"required for token file {path}: set it to the tokenizer's vocabulary size "
            "(e.g. 50304 for GPT-2)",
        )
    return vocab_size


def _memmap_tokens(path: Path, vocab_size: int) -> np.ndarray:
    """The token part of `path`, memory-mapped, its ids checked in sampled blocks (module doc)."""
    try:
        nbytes = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as err:
        raise ConfigError("data", f"cannot read {path}: {err.strerror}; check the path and its permissions") from None
    if nbytes == 0:
        raise ConfigError("data", f"token file {path} is empty; re-export the tokens")
    magic = int.from_bytes(head[:4], "little", signed=True) if len(head) >= 4 else None
    if magic in HEADER_FORMATS:
        dtype, offset, count = _header_layout(path, head, nbytes)
    else:
        dtype, offset = np.dtype(token_dtype(vocab_size)).newbyteorder("<"), 0
        if nbytes % dtype.itemsize:
            raise ConfigError(
                "data",
                f"{path} is {nbytes} bytes, not a whole number of {dtype.name} tokens "
                f"(vocab_size {vocab_size} implies {dtype.name}); check vocab_size or re-export",
            )
        count = nbytes // dtype.itemsize
    try:
        tokens = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))
    except OSError as err:
        raise ConfigError("data", f"cannot read {path}: {err.strerror}; fix its permissions") from None
    for block in sampled_blocks(tokens):
        check_token_ids(str(path), block, vocab_size)
    return tokens


def _header_layout(path: Path, head: bytes, nbytes: int) -> tuple[np.dtype, int, int]:
    """(dtype, offset, count) of an llm.c token file, whose header is `head`, or a one-line
    ConfigError when the header is not one telescope reads or disagrees with the file's size."""
    if len(head) < HEADER_BYTES:
        raise ConfigError("data", f"{path} starts with llm.c's token-file magic but is only {nbytes} bytes, "
                                  f"shorter than its {HEADER_BYTES}-byte header: truncated; re-export it")
    magic, version, count = (int(v) for v in np.frombuffer(head, dtype="<i4", count=3))
    expected, dtype = HEADER_FORMATS[magic]
    dtype = np.dtype(dtype).newbyteorder("<")
    if version != expected:
        raise ConfigError(
            "data",
            f"{path} has llm.c's token-file magic {magic} but header version {version}; telescope reads "
            f"version {expected} ({dtype.name} tokens) with it: re-export with llm.c's write_datafile",
        )
    size = HEADER_BYTES + count * dtype.itemsize
    if count <= 0 or size != nbytes:
        raise ConfigError(
            "data",
            f"{path}: its header counts {count} {dtype.name} tokens ({size} bytes with the header) but the "
            f"file is {nbytes} bytes: truncated or damaged; re-export it",
        )
    return dtype, HEADER_BYTES, count


def sampled_blocks(tokens: np.ndarray) -> list[np.ndarray]:
    """All of `tokens` up to FULL_HASH_BYTES; above, HASH_BLOCKS evenly spaced blocks of
    HASH_BLOCK_BYTES, the first at the start and the last at the end: what a loader can afford to
    read of a file that may hold tens of GB, in every worker."""
    if tokens.nbytes <= FULL_HASH_BYTES:
        return [tokens]
    per_block = HASH_BLOCK_BYTES // tokens.itemsize
    starts = np.linspace(0, len(tokens) - per_block, HASH_BLOCKS).astype(np.int64)
    return [tokens[start : start + per_block] for start in starts]


def check_token_ids(name: str, tokens: np.ndarray, vocab_size: int) -> None:
    """A ConfigError naming vocab_size when `tokens` (from `name`) hold an id >= vocab_size:
    the embedding would fail later with an index error that names neither."""
    top = int(tokens.max()) if len(tokens) else -1
    if top >= vocab_size:
        raise ConfigError(
            "vocab_size",
            f"{name} holds token id {top}, so vocab_size must be > {top}; got {vocab_size} — set it to the "
            "tokenizer's vocabulary size, or re-export the tokens",
        )


def _token_file_corpus(path: Path, vocab_size: int | None, val_frac: float) -> Corpus:
    vocab_size = _require_vocab(path, vocab_size)
    tokens = _memmap_tokens(path, vocab_size)
    cut = len(tokens) - max(1, round(val_frac * len(tokens)))
    return _corpus(str(path), vocab_size, tokens[:cut], tokens[cut:])


def _token_dir_corpus(path: Path, vocab_size: int | None) -> Corpus:
    if not (path / "val.bin").exists():
        raise ConfigError(
            "data", f"{path} has train.bin but no val.bin; add the val split or pass train.bin alone"
        )
    vocab_size = _require_vocab(path / "train.bin", vocab_size)
    train = _memmap_tokens(path / "train.bin", vocab_size)
    val = _memmap_tokens(path / "val.bin", vocab_size)
    return _corpus(str(path), vocab_size, train, val)


# ---------------------------------------------------------------------------- shared


def _corpus(name: str, vocab_size: int, train: np.ndarray, val: np.ndarray) -> Corpus:
    for split, tokens in (("train", train), ("val", val)):
        if len(tokens) < 2:
            raise ConfigError(
                "data",
                f"{name}: the {split} split has {len(tokens)} tokens; give more data or adjust val_frac",
            )
    h = hashlib.sha256(f"{vocab_size}|{train.dtype.str}".encode())
    for tokens in (train, val):
        h.update(f"|{len(tokens)}|".encode())
        _hash_tokens(h, tokens)
    return Corpus(name=name, vocab_size=vocab_size, train=train, val=val, fingerprint=h.hexdigest()[:16])


def _hash_tokens(h: hashlib._Hash, tokens: np.ndarray) -> None:
    """Hash every byte of small splits; the sampled blocks of big ones (a full pass costs seconds)."""
    for block in sampled_blocks(tokens):
        h.update(memoryview(np.ascontiguousarray(block).view(np.uint8)))


def check_fits(corpus: Corpus, split: str, tokens: np.ndarray, seq_len: int) -> None:
    if len(tokens) < seq_len + 1:
        raise ConfigError(
            "seq_len",
            f"{corpus.name}: the {split} split has only {len(tokens)} tokens, too few for one window of "
            f"seq_len + 1; use seq_len <= {len(tokens) - 1}, or give more data"
            + (" or a larger val_frac" if split == "val" else ""),
        )




def check_corpus(data: str, vocab_size: int | None, val_frac: float, seq_len: int) -> Corpus:
    """The corpus a spec names, loaded (and cached) so that a bad path, an unreadable file or a
    split too small for seq_len fails in one line before any trial starts."""
    corpus = load_corpus(data, vocab_size, val_frac)
    check_fits(corpus, "train", corpus.train, seq_len)
    check_fits(corpus, "val", corpus.val, seq_len)
    return corpus


@functools.lru_cache(maxsize=8)
def unigram_entropy(corpus: Corpus) -> float:
    """Entropy in nats/token of the val split's unigram distribution: the loss of a model that
    learned token frequencies and nothing else, so a trained model must come in below it."""
    counts = np.zeros(corpus.vocab_size, dtype=np.int64)
    chunk = 2**24  # bincount widens to int64: bound the copy for big memory-mapped splits
    for start in range(0, len(corpus.val), chunk):
        block = corpus.val[start : start + chunk]
        check_token_ids(f"{corpus.name} (val split)", block, corpus.vocab_size)  # load only sampled big splits
        counts += np.bincount(block, minlength=corpus.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
