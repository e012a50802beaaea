"""telescope.core.memory against the real engine on CPU: parameter and optimizer bytes against
the model's and optimizers' own tensors, activations against what autograd keeps, the step's peak
against the allocations torch's profiler records; and the paper spec's figures."""

from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from telescope.core import memory
from telescope.core.contract import TrialConfig
from telescope.spec.sweep import load_spec
from telescope.train.data import train_batches
from telescope.train.muon_mup import group_parameters
from tests.train.engine_helpers import saved_bytes
from telescope.train.trial import build_engine, torch_settings

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
SHAPE = dict(width=64, base_width=32, head_dim=32, depth=2, seq_len=32, steps=5, num_threads=1, device="cpu")


def engine_and_batch(**changes):
    cfg = TrialConfig(**{**SHAPE, "batch_size": 8, **changes})
    engine = build_engine(cfg)
    x, y = next(train_batches(engine.corpus, cfg.batch_size, cfg.seq_len, 0))
    return cfg, engine, x, y


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_weights_grads_and_optimizer_state_are_the_models_own(optimizer):
    cfg, engine, x, y = engine_and_batch(optimizer=optimizer)
    with torch_settings(cfg, engine.device):
        engine.step(0, x, y)
    counts = memory.param_counts(cfg.width, cfg.depth, cfg.seq_len, 256, cfg.mlp_ratio)
    real = {role: sum(p.numel() for p in ps) for role, ps in group_parameters(engine.model).items()}
    assert counts == real
    est = memory.estimate(cfg, 256)
    params = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    assert est.weights == est.grads == params
    state = sum(t.nbytes for opt in engine.optimizers for s in opt.state.values()
                for t in s.values() if torch.is_tensor(t) and t.ndim > 0)  # AdamW's 0-d step counters aside
    assert est.optimizer_state == state


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activations_are_what_autograd_keeps_and_scale_with_the_micro_batch(checkpointing):
    kept = {}
    for rows in (4, 8):
        cfg, engine, x, y = engine_and_batch(batch_size=rows, activation_checkpointing=checkpointing)
        with torch_settings(cfg, engine.device):
            kept[rows] = saved_bytes(engine, x, y)
        est = memory.estimate(cfg, 256)
        log_softmax = rows * cfg.seq_len * 256 * 4  # the loss's part of what the forward keeps
        if checkpointing:  # only each block's input and the head; a block's own come back in backward
            per_token = cfg.depth * 4 * cfg.width + 4 * cfg.width + 8 + 4 * cfg.width + 16
            assert kept[rows] == pytest.approx(rows * cfg.seq_len * per_token + log_softmax, rel=0.01)
            assert est.activations > kept[rows] - log_softmax  # the recomputed block on top
        else:
            assert kept[rows] == pytest.approx(est.activations + est.weight_copies + log_softmax, rel=0.01)
            kept[rows] -= est.weight_copies  # the weights' copies do not grow with the rows
    assert kept[8] == pytest.approx(2 * kept[4], rel=0.01)  # twice the rows, twice the activations


def step_peak(engine, x, y) -> int:
    """The most bytes allocated at once during one step beyond what was allocated before it, from
    the allocation events of torch's profiler (CPU memory has no allocator statistics)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        engine.step(1, x, y)
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag.name == "Allocation":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    now = peak = 0
    for _, size in sorted(events):
        now += size
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize("width, rows", [(64, 8), (128, 8)])
def test_the_steps_peak_is_the_estimates(width, rows):
    # (64, 8): backward's activations and logits are the peak; (128, 8): Muon's step is
    cfg, engine, x, y = engine_and_batch(width=width, batch_size=rows)
    with torch_settings(cfg, engine.device):
        engine.step(0, x, y)  # optimizer state allocated, as in every later step
        measured = step_peak(engine, x, y)
    est = memory.estimate(cfg, 256)
    assert measured == pytest.approx(est.total - est.weights - est.optimizer_state, rel=0.06)


def test_paper_spec_logits_and_the_micro_batch_that_fits():
    spec = load_spec(SWEEPS / "paper.toml")
    cfg = spec.fixed.replace(width=spec.widths[-1], device="cuda")
    vocab = spec.fixed.vocab_size
    est = memory.estimate(cfg, vocab)
    assert est.micro_batch == 256
    bf16_logits = 256 * 2048 * vocab * 2
    assert bf16_logits / memory.GB == pytest.approx(53, abs=0.5)  # the figure
    # the loss keeps 12 bytes per logit at its peak (see the module docstring), 6x the bf16 logits
    assert est.logits == 6 * bf16_logits
    assert est.total > 80 * memory.GB
    fits = memory.fitting_micro_batch(cfg, vocab, 80 * memory.GB)
    assert fits is not None and 256 % fits == 0
    budget = 80 * memory.GB * (1 - memory.HEADROOM)
    assert memory.estimate(cfg, vocab, micro_batch=fits).total <= budget
    assert memory.estimate(cfg, vocab, micro_batch=2 * fits).total > budget
    # checkpointing lets a larger micro-batch fit; workers share the batch, not the model
    ckpt = memory.fitting_micro_batch(cfg.replace(activation_checkpointing=True), vocab, 80 * memory.GB)
    assert ckpt > fits
    assert memory.fitting_micro_batch(cfg, vocab, 80 * memory.GB, workers=4) == min(fits, 64)


def test_nothing_fits_a_device_smaller_than_the_model():
    cfg = TrialConfig(width=4096, base_width=256, head_dim=128, depth=32, seq_len=2048, batch_size=8)
    est = memory.estimate(cfg, 50304, micro_batch=1)
    assert est.weights + est.grads + est.optimizer_state > 80 * memory.GB
    assert memory.fitting_micro_batch(cfg, 50304, 80 * memory.GB) is None
    assert memory.fitting_micro_batch(cfg, 50304, 1000 * memory.GB) == 8
