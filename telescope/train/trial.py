"""One trial: TrialConfig in, TrialResult out. A pure, module-level function so Ray can ship it.

`run_trial` builds an `Engine` (corpus, model, optimizers on one device) and drives
`Engine.step`, the single training step that bench/engine.py times too. It logs the train loss
every step, evaluates on the fixed validation windows every eval_interval steps and at the end,
and stops early as "diverged" when the loss is non-finite or exceeds diverge_factor x the first
step's loss. Exceptions propagate: the dispatcher records them as failed trials.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from telescope.core.contract import TrialConfig, TrialResult
from telescope.core.corpus import Corpus, load_corpus
from telescope.train.data import train_batches, val_batches
from telescope.errors import ConfigError
from telescope.core.flops import optimizer_flops, training_flops
from telescope.train.model import GPT, build_model
from telescope.train.optim import build_optimizers, lr_factor, set_lr


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


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return "cpu"


@dataclass
class Engine:
    """Everything a trial trains: the corpus, the model and its optimizers, on one device."""

    cfg: TrialConfig
    corpus: Corpus
    device: torch.device
    model: GPT
    optimizers: list[torch.optim.Optimizer]
    autocast: Callable[[], contextlib.AbstractContextManager]

    def step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step at 0-based schedule position `step`; returns the batch's train loss."""
        set_lr(self.optimizers, lr_factor(step, self.cfg))
        with self.autocast():
            loss = self.model(x, y)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item()

    @torch.no_grad()
    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean loss over `batches` (equal-sized, so the mean of batch means is the token mean)."""
        with self.autocast():
            losses = [self.model(x, y) for x, y in batches]
        return torch.stack(losses).mean().item()


def build_engine(cfg: TrialConfig, device: torch.device | None = None) -> Engine:
    device = resolve_device(cfg.device) if device is None else device
    corpus = load_corpus(cfg.data, cfg.vocab_size, cfg.val_frac)
    model = build_model(cfg, corpus.vocab_size, device=device)
    if device.type == "cuda":
        # bf16 matmuls on GPU; the loss is computed in fp32 (GPT.forward casts the logits)
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext  # fp32 on CPU: autocast there only adds casts
    return Engine(cfg, corpus, device, model, build_optimizers(model, cfg), autocast)


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


def run_trial(cfg: TrialConfig) -> TrialResult:
    """Train `cfg` and report; bit-for-bit repeatable on CPU for a fixed seed and thread count."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    with torch_settings(cfg, device):
        engine = build_engine(cfg, device)
        to_device = lambda x, y: (x.to(device, non_blocking=True), y.to(device, non_blocking=True))  # noqa: E731
        val = [to_device(x, y) for x, y in val_batches(engine.corpus, cfg.batch_size, cfg.seq_len, cfg.eval_batches)]
        batches = train_batches(engine.corpus, cfg.batch_size, cfg.seq_len, cfg.seed)

        train_steps: list[int] = []
        train_loss: list[float] = []
        val_steps: list[int] = []
        val_loss: list[float] = []
        error: str | None = None
        for step in range(cfg.steps):
            loss = engine.step(step, *to_device(*next(batches)))
            train_steps.append(step + 1)
            train_loss.append(loss)
            limit = cfg.diverge_factor * train_loss[0]
            if not math.isfinite(loss) or loss > limit:
                error = (f"loss {loss:.4g} > {cfg.diverge_factor:g} x initial {train_loss[0]:.4g}"
                         if math.isfinite(loss) else f"loss {loss}") + f" at step {step + 1}"
                break
            if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps:
                val_steps.append(step + 1)
                val_loss.append(engine.evaluate(val))
                if not math.isfinite(val_loss[-1]):
                    error = f"validation loss {val_loss[-1]} at step {step + 1}"
                    break
        steps_done = len(train_steps)

    diverged = error is not None
    vocab = engine.corpus.vocab_size
    return TrialResult(
        status="diverged" if diverged else "completed",
        final_loss=math.nan if diverged else val_loss[-1],
        final_train_loss=train_loss[-1],
        tokens=steps_done * cfg.batch_size * cfg.seq_len,
        flops=training_flops(cfg.width, cfg.depth, cfg.seq_len, vocab, cfg.batch_size, steps_done, cfg.mlp_ratio),
        wall_time_s=time.perf_counter() - start,
        device=describe_device(device),
        steps_done=steps_done,
        n_params=engine.model.n_matmul_params(),
        optimizer_flops=optimizer_flops(cfg.optimizer, cfg.width, cfg.depth, steps_done, cfg.mlp_ratio),
        train_steps=train_steps,
        train_loss=train_loss,
        val_steps=val_steps,
        val_loss=val_loss,
        error=error,
    )
