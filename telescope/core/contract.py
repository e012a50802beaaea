"""The trial's contract: `TrialConfig` in, `TrialResult` out.

Both are plain, frozen, picklable dataclasses so Ray can ship them and the ledger can flatten
them. A trial knows nothing of sweeps: everything it needs is in its config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from telescope.core.numbers import canonical
from telescope.errors import ConfigError

Optimizer = Literal["muon", "adamw"]
Parameterization = Literal["mup", "sp"]
HiddenLrRule = Literal["adam-mup", "spectral"]
Status = Literal["completed", "diverged", "failed"]

OPTIMIZERS = ("muon", "adamw")
PARAMETERIZATIONS = ("mup", "sp")
HIDDEN_LR_RULES = ("adam-mup", "spectral")
DEVICES = ("auto", "cpu", "cuda")
NS_DTYPES = ("auto", "bf16", "fp32")
# The Newton-Schulz arithmetic every trial used before `ns_dtype` existed: ids at it stay as they were.
LEGACY_NS_DTYPE = "bf16"
# The coordinate check's trial settings (telescope.train.coordcheck): a moderately large lr, so SP's
# width dependence shows within a few steps; a shape small enough that widths 32..256 run in
# seconds on a CPU. Here, torch-free, so the CLI can show them without importing torch.
COORDCHECK_DEFAULTS = dict(depth=2, seq_len=64, batch_size=8, lr=0.02, init_std=0.02)
BUILTIN_CORPUS = "builtin:stdlib"
BYTE_VOCAB = 256  # byte-level text: the vocabulary when a corpus has no tokenizer
# How a trial runs, not what it computes: left out of its id. Micro-batching, compiling and
# activation checkpointing compute the same gradients, only rounded in another order.
EXECUTION_FIELDS = frozenset({"num_threads", "micro_batch_size", "compile", "activation_checkpointing",
                              "loss_read_interval"})
AUTO_MICRO_BATCH = "auto"
LOSS_READ_INTERVAL_CUDA = 16


def check_val_frac(value: object) -> None:
    """The validation share of a corpus: strictly between 0 and 1."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1):
        raise ConfigError("val_frac", f"must be between 0 and 1 (exclusive); got {value!r}")


def check_vocab_size(value: object) -> None:
    """None (byte-level text), or a token vocabulary that fits the .bin formats' uint32."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= 2**32):
        raise ConfigError("vocab_size", f"must be a whole number in [2, 2^32]; got {value!r}")


def divisors(n: int) -> list[int]:
    """The positive divisors of n, ascending: the micro-batch sizes a batch of n rows splits into."""
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest_multiple(n: int, k: int) -> int:
    return max(k, round(n / k) * k)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs. Width is the only thing a sweep changes across levels.

    `lr`, `init_std` and `weight_decay` are *base* values: muP (see telescope.core.scaling) rescales
    them per parameter group from the width multiplier width / base_width.
    """

    # model shape: depth, head_dim, seq_len held fixed across widths; heads = width / head_dim
    width: int = 64
    base_width: int = 32
    depth: int = 4
    head_dim: int = 32
    mlp_ratio: int = 4
    # training
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 200
    warmup_frac: float = 0.1  # linear warmup over this fraction of steps
    final_lr_frac: float = 0.1  # cosine decays to this fraction of peak
    # swept hyperparameters (base values)
    lr: float = 3e-3
    init_std: float = 0.02
    weight_decay: float = 0.1
    # method
    optimizer: Optimizer = "muon"
    parameterization: Parameterization = "mup"
    # muon only: "spectral" lr ~ 1/sqrt(m) keeps each hidden update width-independent (the coordinate
    # check measures it flat); "adam-mup" lr ~ 1/m is the paper's rule, kept to reproduce it.
    hidden_lr_rule: HiddenLrRule = "spectral"
    # data
    data: str = BUILTIN_CORPUS  # builtin:stdlib, a directory/glob of text files, or a .bin token file
    vocab_size: int | None = None  # required for .bin token files; byte-level (256) otherwise
    val_frac: float = 0.05
    # evaluation, divergence, determinism
    seed: int = 0
    eval_interval: int = 50
    eval_batches: int = 8
    diverge_factor: float = 3.0  # stop as diverged when train loss > factor * initial loss
    # auto: cuda (bf16 autocast) when visible, else cpu; a sweep resolves it per level before its
    # trial ids are made (telescope.run.devices), so its ids are those of the explicit setting
    device: str = "auto"
    num_threads: int | None = None  # torch intra-op threads on CPU; None leaves torch's default
    # Muon's Newton-Schulz arithmetic. "bf16" is torch.optim.Muon's: fast on GPUs, but a CPU without
    # native bf16 matmuls runs it many times slower than fp32 (and fp32 is the more exact of the two).
    # "auto": bf16 on cuda, fp32 on cpu, decided with the device (see `resolved_ns_dtype`).
    ns_dtype: str = "auto"
    # which code trains it (telescope.core.trainable.Trainable.identity); "" is the built-in GPT
    trainable: str = ""
    # Execution settings of the built-in engine (EXECUTION_FIELDS: they do not rename a trial).
    # Rows per forward/backward pass; the gradients of a worker's batch_size / workers rows are
    # accumulated over its micro-batches before the one optimizer step. None: the whole batch in
    # one pass; "auto": on cuda the largest micro-batch telescope.core.memory estimates to fit
    # the device's whole memory (so not for trials packed several to a GPU), on cpu the whole batch.
    micro_batch_size: int | str | None = None
    compile: bool = False  # torch.compile the model (worth it on GPUs; slow to compile on CPUs)
    activation_checkpointing: bool = False  # recompute each block in backward instead of keeping its activations
    # steps between reads of the train loss from the device (each read waits for the device to
    # catch up); None: every LOSS_READ_INTERVAL_CUDA steps on cuda, every step on cpu, where a read is free
    loss_read_interval: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise ConfigError(name, f"must be a positive number; got {value!r}")

        for name in ("width", "base_width", "depth", "head_dim", "mlp_ratio", "seq_len",
                     "batch_size", "steps", "eval_interval", "eval_batches"):
            positive(name)
            if not isinstance(getattr(self, name), int):
                raise ConfigError(name, f"must be a whole number; got {getattr(self, name)!r}")
        for name in ("lr", "init_std", "diverge_factor"):
            positive(name)
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ConfigError("weight_decay", f"must be >= 0; got {self.weight_decay!r}")
        for name in ("warmup_frac", "final_lr_frac"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ConfigError(name, f"must be between 0 and 1; got {v!r}")
        check_val_frac(self.val_frac)
        if self.diverge_factor <= 1:
            raise ConfigError("diverge_factor", f"must be > 1; got {self.diverge_factor!r}")
        if self.width % self.head_dim:
            raise ConfigError(
                "width", f"must be a multiple of head_dim ({self.head_dim}); got {self.width}"
            )
        if self.base_width % self.head_dim:
            raise ConfigError(
                "base_width", f"must be a multiple of head_dim ({self.head_dim}); got {self.base_width}"
            )
        if self.width < self.base_width:
            raise ConfigError(
                "width", f"must be >= base_width ({self.base_width}); got {self.width}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ConfigError(
                "parameterization",
                f"must be one of {', '.join(PARAMETERIZATIONS)}; got {self.parameterization!r}",
            )
        if self.hidden_lr_rule not in HIDDEN_LR_RULES:
            raise ConfigError(
                "hidden_lr_rule",
                f"must be one of {', '.join(HIDDEN_LR_RULES)}; got {self.hidden_lr_rule!r}",
            )
        if self.device not in DEVICES:
            raise ConfigError("device", f"must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.ns_dtype not in NS_DTYPES:
            raise ConfigError("ns_dtype", f"must be one of {', '.join(NS_DTYPES)}; got {self.ns_dtype!r}")
        check_vocab_size(self.vocab_size)
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ConfigError("num_threads", f"must be a positive whole number; got {self.num_threads!r}")
        if not isinstance(self.trainable, str):
            raise ConfigError("trainable", f"must be a trainable's identity string; got {self.trainable!r}")
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError("data", f"must be a path or {BUILTIN_CORPUS!r}; got {self.data!r}")
        for name in ("compile", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false; got {getattr(self, name)!r}")
        if self.loss_read_interval is not None and (not isinstance(self.loss_read_interval, int)
                                                    or isinstance(self.loss_read_interval, bool)
                                                    or self.loss_read_interval < 1):
            raise ConfigError("loss_read_interval", f"must be a whole number of steps >= 1 (or unset); "
                                                    f"got {self.loss_read_interval!r}")
        self.micro_batches(1)  # a micro-batch that cannot divide the batch fails here, not in a worker

    def micro_batches(self, workers: int) -> tuple[int, int | None]:
        """(rows per worker, rows per micro-batch) when the global batch is shared by `workers`
        ranks; the micro-batch is None while it is "auto" (the engine decides it on its device).
        ConfigError when either does not divide."""
        if self.batch_size % workers:
            raise ConfigError("batch_size", f"must be a multiple of the {workers} workers that share it; "
                                            f"got {self.batch_size}: use {_nearest_multiple(self.batch_size, workers)}")
        per_worker = self.batch_size // workers
        micro = self.micro_batch_size
        if micro is None:
            return per_worker, per_worker
        if micro == AUTO_MICRO_BATCH:
            return per_worker, None
        if not isinstance(micro, int) or isinstance(micro, bool) or micro < 1 or per_worker % micro:
            where = f"batch_size {self.batch_size} / {workers} workers = {per_worker}" if workers > 1 else \
                f"batch_size {self.batch_size}"
            raise ConfigError("micro_batch_size", f"must divide the rows each worker trains on ({where}); got "
                                                  f"{micro!r}: use one of {', '.join(map(str, divisors(per_worker)))}, "
                                                  f"{AUTO_MICRO_BATCH!r}, or leave it unset for the whole batch")
        return per_worker, micro

    @property
    def n_heads(self) -> int:
        return self.width // self.head_dim

    @property
    def width_mult(self) -> float:
        return self.width / self.base_width

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_frac * self.steps))

    @property
    def resolved_ns_dtype(self) -> str:
        """The Newton-Schulz dtype this trial computes in: "auto" follows the device (bf16 on cuda,
        fp32 on cpu); with the device itself still "auto" it stays "auto" until a sweep resolves it."""
        if self.ns_dtype != "auto" or self.device == "auto":
            return self.ns_dtype
        return "bf16" if self.device == "cuda" else "fp32"

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def fingerprint(self) -> str:
        """A stable content hash: equal configs give equal ids, on any machine.

        EXECUTION_FIELDS are left out: they are how a trial is executed (threads from the resources
        it was given, micro-batches, compiling, checkpointing), not what it computes, and changing
        them must not rename a sweep's trials.
        """
        computed = canonical({k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS})
        if not self.trainable:  # the built-in GPT: its ids are the ones they were before other trainables
            del computed["trainable"]
        # what the trial computes in, not how it was written; at bf16 (or unresolved) the ids are
        # the ones trials had before the field existed, when every Newton-Schulz ran in bf16
        computed["ns_dtype"] = self.resolved_ns_dtype
        if computed["ns_dtype"] in (LEGACY_NS_DTYPE, "auto"):
            del computed["ns_dtype"]
        blob = json.dumps(computed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trial_id(level: int, config: TrialConfig) -> str:
    """Deterministic and content-addressed: the same trial of the same spec always gets the same
    id, so re-running a recorded trial is a no-op. `level` keeps equal configs run at different
    levels of one sweep (a point reused after a shift) apart in the ledger."""
    return f"L{level}-w{config.width}-s{config.seed}-{config.fingerprint()}"


@dataclass
class TrialResult:
    """What one trial produced. `final_loss` is the last validation loss (NaN unless completed)."""

    status: Status
    final_loss: float
    final_train_loss: float
    tokens: int  # tokens trained on (steps actually run x batch x seq_len)
    flops: float  # model FLOPs actually spent (6ND + attention), see telescope.core.flops
    wall_time_s: float
    device: str  # e.g. "cpu" or "cuda:0 (NVIDIA H100)"
    steps_done: int
    n_params: int
    # Muon's Newton-Schulz FLOPs actually spent (0 for AdamW), apart from `flops`: they are paid per
    # step, not per token (telescope.core.flops.optimizer_flops)
    optimizer_flops: float = 0.0
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    error: str | None = None  # why it failed or diverged
    # a user's trainable's own scalars, declared in [trainable] metrics: one ledger column each
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> dict[str, Any]:
        """The scalar fields (no curves), for printing and for the ledger's trial row."""
        curves = {"train_steps", "train_loss", "val_steps", "val_loss"}
        # not asdict(): it would deep-copy the curves only to drop them
        scalars = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in curves}
        extra = scalars.pop("extra")  # flattened: each is a column of its own
        return {**scalars, **extra}
