"""One trial: TrialConfig in, TrialResult out. A pure, module-level function so Ray can ship it.

`run_trial` builds an `Engine` (corpus, model, optimizers on one device) and drives
`Engine.step`, the single training step that bench/engine.py times too. It logs the train loss
every step, evaluates on the fixed validation windows every eval_interval steps and at the end,
and stops early as "diverged" when the loss is non-finite or exceeds diverge_factor x the first
step's loss. Exceptions propagate: the dispatcher records them as failed trials.

Several workers, one trial: where torch.distributed is initialised over N > 1 ranks (Ray Train's
TorchTrainer does it, then calls run_trial on every rank), every rank draws the same global batch
from the same seeded stream and trains on its rows r*B/N .. (r+1)*B/N, so the ranks' rows together
are the one-process batch. Gradients are summed across ranks with all_reduce in flat buckets after
the last micro-batch's backward: one collective per optimizer step, like DDP with no_sync on the
other micro-batches, but with no wrapper between the model and torch.compile, checkpointing or the
coordinate check's hooks. DDP would overlap that all-reduce with backward; with accumulation over
several micro-batches it is paid once per step against the whole global batch's compute, a small
share where several workers pay off. Every rank then applies the same update (Muon's Newton-Schulz
shared among them, telescope.train.muon), the recorded losses are the means over ranks,
validation is sharded over the ranks the same way, and every rank returns the same TrialResult.

On a GPU the step's loss stays on the device: losses are read every cfg.loss_read_interval steps
(default LOSS_READ_INTERVAL_CUDA) and before every evaluation, so the host does not wait for the
GPU on every step. The divergence check runs on each batch read, and a diverged trial still ends
at the first bad step (the steps after it in the batch are trained and discarded). On a CPU a
read costs nothing and by default every step is read.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from telescope.core import memory
from telescope.core.contract import LOSS_READ_INTERVAL_CUDA, TrialConfig, TrialResult
from telescope.core.corpus import Corpus, load_corpus
from telescope.train.data import train_batches, val_batches
from telescope.errors import ConfigError
from telescope.core.flops import optimizer_flops, training_flops
from telescope.train.model import GPT, build_model
from telescope.train.optim import build_optimizers, lr_factor, set_lr

GRAD_BUCKET_ELEMENTS = memory.GRAD_BUCKET_ELEMENTS  # fp32 values per gradient all-reduce


def local_device_kind() -> str:
    """What "auto" means in this process: "cuda" (bf16 autocast) when torch sees a GPU, else "cpu" (fp32)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str) -> torch.device:
    """"auto" -> the (first visible) GPU when there is one, else the CPU. Under Ray,
    CUDA_VISIBLE_DEVICES holds only the assigned GPU, so cuda:0 is it."""
    if name == "auto":
        name = local_device_kind()
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", "cuda requested but no GPU is visible; use auto or cpu")
        return torch.device("cuda", 0)
    return torch.device("cpu")


def describe_device(device: torch.device, workers: int = 1) -> str:
    """"cuda:0 (NVIDIA H100)" or "cpu"; for a trial on several ranks, the same on every rank:
    "2 x cuda (NVIDIA H100)" (each rank's GPU index is its own)."""
    if workers > 1:
        name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        return f"{workers} x {device.type}{name}"
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def world() -> tuple[int, int]:
    """(rank, number of ranks) of this process's torch.distributed group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class Engine:
    """Everything a trial trains: the corpus, the model and its optimizers, on one device, as
    rank `rank` of `workers`. `model` is the GPT itself (its modules are what hooks see);
    `forward` is what computes the loss: the model, or its torch.compile'd wrapper."""

    cfg: TrialConfig
    corpus: Corpus
    device: torch.device
    model: GPT
    optimizers: list[torch.optim.Optimizer]
    autocast: Callable[[], contextlib.AbstractContextManager]
    forward: Callable[..., torch.Tensor]
    micro_batch: int  # rows per forward/backward pass
    rank: int = 0
    workers: int = 1

    def local_rows(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch: rank r of N takes rows r*B/N .. (r+1)*B/N."""
        if self.workers == 1:
            return x, y
        rows = x.shape[0] // self.workers
        part = slice(self.rank * rows, (self.rank + 1) * rows)
        return x[part], y[part]

    def step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step at 0-based schedule position `step` on this rank's rows `x`, `y`;
        returns their mean train loss as a 0-d tensor on the device (reading it waits for the step).

        Each micro-batch's loss is scaled by 1 / (micro-batches x workers), so the gradients
        accumulated over the micro-batches and summed over the ranks are exactly the global
        batch's mean gradient."""
        set_lr(self.optimizers, lr_factor(step, self.cfg))
        chunks = list(zip(x.split(self.micro_batch), y.split(self.micro_batch)))
        scale = 1.0 / (len(chunks) * self.workers)
        total = None
        for xc, yc in chunks:
            with self.autocast():
                loss = self.forward(xc, yc)
            (loss if scale == 1.0 else loss * scale).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.workers > 1:
            all_reduce_sum([p.grad for p in self.model.parameters() if p.grad is not None])
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return total if len(chunks) == 1 else total / len(chunks)

    @torch.no_grad()
    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean loss over `batches`, this rank's rows of each validation batch, in micro-batches,
        averaged over the ranks (all equal-sized, so the mean of the means is the token mean)."""
        with self.autocast():
            losses = [self.forward(xc, yc) for x, y in batches
                      for xc, yc in zip(x.split(self.micro_batch), y.split(self.micro_batch))]
        return self.mean_over_ranks([torch.stack(losses).mean()])[0]

    def mean_over_ranks(self, losses: Sequence[torch.Tensor]) -> list[float]:
        """Per-rank 0-d losses as floats, each the mean over the ranks: one read, one collective."""
        stacked = torch.stack(list(losses)).float()
        if self.workers > 1:
            dist.all_reduce(stacked)
            stacked /= self.workers
        return stacked.tolist()


def all_reduce_sum(tensors: list[torch.Tensor], bucket: int = GRAD_BUCKET_ELEMENTS) -> None:
    """Sum each tensor over the ranks in place: small tensors together, in flat buckets of at most
    `bucket` values (a few collectives rather than one per tensor), a tensor that fills a bucket
    on its own in place (no copy)."""
    start = 0
    while start < len(tensors):
        end, size = start, 0
        while end < len(tensors) and (end == start or size + tensors[end].numel() <= bucket):
            size += tensors[end].numel()
            end += 1
        group = tensors[start:end]
        start = end
        if len(group) == 1:
            dist.all_reduce(group[0])
            continue
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        torch._foreach_copy_(group, [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in group]), group)])


def resolve_micro_batch(cfg: TrialConfig, vocab_size: int, device: torch.device, workers: int) -> int:
    """Rows per pass: cfg's micro_batch_size; "auto": on cuda the largest that telescope.core.memory
    estimates to fit the device, on cpu the worker's whole batch."""
    per_worker, micro = cfg.micro_batches(workers)
    if micro is not None:
        return micro
    if device.type != "cuda":
        return per_worker
    total = torch.cuda.get_device_properties(device).total_memory
    fitting = memory.fitting_micro_batch(cfg, vocab_size, total, workers=workers, device="cuda")
    if fitting is None:
        need = memory.estimate(cfg, vocab_size, micro_batch=1, workers=workers, device="cuda").total
        raise ConfigError("micro_batch_size", f"even 1 row per pass needs about {need / memory.GB:.1f} GB by "
                                              f"telescope.core.memory's estimate, more than this GPU's "
                                              f"{total / memory.GB:.1f} GB allows; give the trial more memory")
    return fitting


def build_engine(cfg: TrialConfig, device: torch.device | None = None) -> Engine:
    device = resolve_device(cfg.device) if device is None else device
    rank, workers = world()
    corpus = load_corpus(cfg.data, cfg.vocab_size, cfg.val_frac)
    micro_batch = resolve_micro_batch(cfg, corpus.vocab_size, device, workers)
    model = build_model(cfg, corpus.vocab_size, device=device)
    if device.type == "cuda":
        # bf16 matmuls on GPU; the loss is computed in fp32 (GPT.forward casts the logits)
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext  # fp32 on CPU: autocast there only adds casts
    forward = torch.compile(model) if cfg.compile else model
    return Engine(cfg, corpus, device, model, build_optimizers(model, cfg, workers), autocast, forward,
                  micro_batch, rank, workers)


@contextlib.contextmanager
def torch_settings(cfg: TrialConfig, device: torch.device):
    """Threads for this trial, restored afterwards: run_trial must not leave global torch state
    changed in a notebook or a long-lived worker.

    No torch.use_deterministic_algorithms: the CPU kernels this model uses are already
    deterministic for a fixed thread count (tests/train/test_trial.py checks bit-for-bit repeats), and
    the switch imports torch's compiler stack, seconds in every fresh Ray worker."""
    threads = torch.get_num_threads()
    try:
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        yield
    finally:
        torch.set_num_threads(threads)


def run_trial(cfg: TrialConfig, device: torch.device | None = None) -> TrialResult:
    """Train `cfg` and report; bit-for-bit repeatable on CPU for a fixed seed and thread count.
    `device`: where to train (default: cfg.device resolved); on each rank of a multi-worker trial,
    that rank's device."""
    start = time.perf_counter()
    device = resolve_device(cfg.device) if device is None else device
    with torch_settings(cfg, device):
        engine = build_engine(cfg, device)
        to_device = lambda x, y: (x.to(device, non_blocking=True), y.to(device, non_blocking=True))  # noqa: E731
        val = [to_device(*engine.local_rows(x, y))
               for x, y in val_batches(engine.corpus, cfg.batch_size, cfg.seq_len, cfg.eval_batches)]
        batches = train_batches(engine.corpus, cfg.batch_size, cfg.seq_len, cfg.seed)
        read_every = cfg.loss_read_interval or (LOSS_READ_INTERVAL_CUDA if device.type == "cuda" else 1)

        train_steps: list[int] = []
        train_loss: list[float] = []
        val_steps: list[int] = []
        val_loss: list[float] = []
        unread: list[torch.Tensor] = []
        error: str | None = None
        for step in range(cfg.steps):
            unread.append(engine.step(step, *to_device(*engine.local_rows(*next(batches)))))
            evaluate = (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps
            if len(unread) < read_every and not evaluate:
                continue
            for loss in engine.mean_over_ranks(unread):
                train_steps.append(len(train_steps) + 1)
                train_loss.append(loss)
                limit = cfg.diverge_factor * train_loss[0]
                if not math.isfinite(loss) or loss > limit:
                    error = (f"loss {loss:.4g} > {cfg.diverge_factor:g} x initial {train_loss[0]:.4g}"
                             if math.isfinite(loss) else f"loss {loss}") + f" at step {train_steps[-1]}"
                    break
            unread = []
            if error is not None:
                break
            if evaluate:
                val_steps.append(step + 1)
                val_loss.append(engine.evaluate(val))
                if not math.isfinite(val_loss[-1]):
                    error = f"validation loss {val_loss[-1]} at step {step + 1}"
                    break
        steps_done = len(train_steps)
        wall_time_s = time.perf_counter() - start
        if engine.workers > 1:  # the slowest rank's, so that every rank reports the same
            wall = torch.tensor([wall_time_s], dtype=torch.float64, device=device)
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)
            wall_time_s = wall.item()

    diverged = error is not None
    vocab = engine.corpus.vocab_size
    return TrialResult(
        status="diverged" if diverged else "completed",
        final_loss=math.nan if diverged else val_loss[-1],
        final_train_loss=train_loss[-1],
        tokens=steps_done * cfg.batch_size * cfg.seq_len,
        flops=training_flops(cfg.width, cfg.depth, cfg.seq_len, vocab, cfg.batch_size, steps_done, cfg.mlp_ratio),
        wall_time_s=wall_time_s,
        device=describe_device(device, engine.workers),
        steps_done=steps_done,
        n_params=engine.model.n_matmul_params(),
        optimizer_flops=optimizer_flops(cfg.optimizer, cfg.width, cfg.depth, steps_done, cfg.mlp_ratio),
        train_steps=train_steps,
        train_loss=train_loss,
        val_steps=val_steps,
        val_loss=val_loss,
        error=error,
    )
