"""The built-in engine's execution settings: micro-batches, activation checkpointing, compiling and
batched loss reads compute what the plain engine computes, and leave trial ids as they were."""

import math

import pytest
import torch

from telescope.core.contract import EXECUTION_FIELDS, TrialConfig
from telescope.errors import ConfigError
from telescope.train.data import train_batches
from tests.train.engine_helpers import saved_bytes
from telescope.train.trial import build_engine, resolve_micro_batch, run_trial, torch_settings

TINY = dict(width=64, base_width=32, head_dim=32, depth=2, seq_len=32, batch_size=8, steps=10,
            eval_interval=5, eval_batches=2, lr=0.02, num_threads=1, device="cpu")


def train(cfg: TrialConfig, steps: int):
    """The engine's losses over `steps` steps, and its parameters after them."""
    with torch_settings(cfg, torch.device("cpu")):
        engine = build_engine(cfg)
        batches = train_batches(engine.corpus, cfg.batch_size, cfg.seq_len, cfg.seed)
        losses = [engine.step(step, *next(batches)).item() for step in range(steps)]
    return losses, [p.detach().clone() for p in engine.model.parameters()]


def test_micro_batches_accumulate_the_whole_batchs_gradient():
    whole, whole_params = train(TrialConfig(**TINY), 8)
    split, split_params = train(TrialConfig(**TINY, micro_batch_size=2), 8)
    assert split == pytest.approx(whole, rel=1e-5)
    assert whole[-1] < whole[0] - 0.5  # it trained: the curves compare something
    for a, b in zip(whole_params, split_params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_run_trial_with_micro_batches_records_the_same_trial():
    cfg = TrialConfig(**TINY)
    split_cfg = cfg.replace(micro_batch_size=4)
    whole, split = run_trial(cfg), run_trial(split_cfg)
    assert split.train_loss == pytest.approx(whole.train_loss, rel=1e-5)
    assert split.val_loss == pytest.approx(whole.val_loss, rel=1e-5)
    assert split.tokens == whole.tokens and split.flops == whole.flops
    assert split_cfg.fingerprint() == cfg.fingerprint()


def test_activation_checkpointing_keeps_less_and_computes_the_same():
    plain, plain_params = train(TrialConfig(**TINY), 6)
    ckpt_cfg = TrialConfig(**TINY, activation_checkpointing=True)
    ckpt, ckpt_params = train(ckpt_cfg, 6)
    assert ckpt == pytest.approx(plain, rel=1e-6)
    for a, b in zip(plain_params, ckpt_params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    x, y = next(train_batches(build_engine(ckpt_cfg).corpus, 8, 32, 0))
    assert saved_bytes(build_engine(ckpt_cfg), x, y) < 0.5 * saved_bytes(build_engine(TrialConfig(**TINY)), x, y)
    assert ckpt_cfg.fingerprint() == TrialConfig(**TINY).fingerprint()


def test_compile_is_off_by_default_and_reaches_the_engine():
    assert TrialConfig().compile is False and TrialConfig().activation_checkpointing is False
    assert TrialConfig().micro_batch_size is None and TrialConfig().loss_read_interval is None
    eager = build_engine(TrialConfig(**TINY))
    assert eager.forward is eager.model
    # torch.compile is lazy: building the engine compiles nothing (a compiled CPU run takes
    # minutes here; bench/gpu.py runs one on a GPU)
    compiled = build_engine(TrialConfig(**TINY, compile=True))
    assert isinstance(compiled.forward, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.forward._orig_mod is compiled.model
    assert TrialConfig(compile=True).fingerprint() == TrialConfig().fingerprint()


def test_execution_settings_keep_trial_ids():
    base = TrialConfig(width=64, lr=0.01)
    assert base.fingerprint() == "24ddd854eefe64dd"  # the id it had before these settings existed
    changed = base.replace(micro_batch_size=4, compile=True, activation_checkpointing=True, loss_read_interval=4)
    assert changed.fingerprint() == base.fingerprint()
    assert {"micro_batch_size", "compile", "activation_checkpointing", "loss_read_interval"} <= EXECUTION_FIELDS


def test_reading_losses_in_batches_records_the_same_trial_and_the_same_divergence():
    cfg = TrialConfig(**TINY)
    every, batched = run_trial(cfg), run_trial(cfg.replace(loss_read_interval=4))
    assert batched.train_loss == every.train_loss and batched.val_loss == every.val_loss
    diverging = cfg.replace(lr=100.0, steps=30, eval_interval=30)
    each, read_by_8 = run_trial(diverging), run_trial(diverging.replace(loss_read_interval=8))
    assert each.status == read_by_8.status == "diverged"
    assert each.steps_done < 8  # the bad step sits inside the first batch read
    assert read_by_8.steps_done == each.steps_done and read_by_8.train_loss == each.train_loss
    assert read_by_8.error == each.error and f"at step {each.steps_done}" in each.error
    assert read_by_8.tokens == each.tokens and math.isnan(read_by_8.final_loss)


@pytest.mark.parametrize("changes, field, fix", [
    ({"micro_batch_size": 3}, "micro_batch_size", "use one of 1, 2, 4, 8"),
    ({"micro_batch_size": 0}, "micro_batch_size", "use one of 1, 2, 4, 8"),
    ({"micro_batch_size": "half"}, "micro_batch_size", "'auto'"),
    ({"compile": "yes"}, "compile", "true or false"),
    ({"loss_read_interval": 0}, "loss_read_interval", ">= 1"),
])
def test_bad_settings_name_the_field_and_the_fix(changes, field, fix):
    with pytest.raises(ConfigError) as err:
        TrialConfig(**{**TINY, **changes})
    assert err.value.field == field and fix in err.value.message


def test_workers_must_share_the_batch_and_micro_batches_divide_their_share():
    cfg = TrialConfig(**TINY, micro_batch_size=4)
    assert cfg.micro_batches(1) == (8, 4) and cfg.micro_batches(2) == (4, 4)
    with pytest.raises(ConfigError) as err:
        cfg.micro_batches(4)  # 2 rows per worker
    assert err.value.field == "micro_batch_size" and "8 / 4 workers = 2" in err.value.message
    assert "use one of 1, 2" in err.value.message
    with pytest.raises(ConfigError) as err:
        cfg.micro_batches(3)
    assert err.value.field == "batch_size" and "3 workers" in err.value.message and "use 9" in err.value.message


def test_auto_micro_batch_on_cpu_is_the_workers_whole_batch():
    cfg = TrialConfig(**TINY, micro_batch_size="auto")
    assert cfg.micro_batches(2) == (4, None)
    assert resolve_micro_batch(cfg, 256, torch.device("cpu"), workers=1) == 8
    assert resolve_micro_batch(cfg, 256, torch.device("cpu"), workers=2) == 4
    assert build_engine(cfg).micro_batch == 8
    assert cfg.fingerprint() == TrialConfig(**TINY).fingerprint()
