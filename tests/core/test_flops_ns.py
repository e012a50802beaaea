"""Muon's Newton-Schulz FLOPs: paid per optimizer step (~width^3), against the model's ~width^2
per token, so they count at large widths and small batches and vanish at large batches."""

import pytest

from telescope.core.flops import muon_step_flops, newton_schulz_flops, optimizer_flops, training_flops
from telescope.core.optimizers import MUON_SETTINGS


def test_optimizer_flops_are_muons_newton_schulz_per_step_and_nothing_for_adamw():
    width, depth, steps = 64, 3, 7
    per_block = 4 * newton_schulz_flops(width, width) + 2 * newton_schulz_flops(width, 4 * width)
    assert optimizer_flops("muon", width, depth, steps) == steps * depth * per_block
    assert optimizer_flops("muon", width, depth, steps) == steps * muon_step_flops(width, depth)
    assert optimizer_flops("adamw", width, depth, steps) == 0.0
    # the iterations Muon runs are the ones counted
    assert newton_schulz_flops(width, width) == MUON_SETTINGS["ns_steps"] * newton_schulz_flops(width, width, 1)


def test_they_grow_8x_per_width_doubling_against_the_models_4x():
    assert muon_step_flops(1024, 4) == 8 * muon_step_flops(512, 4)
    model = [training_flops(w, 4, 128, 256, 16, 1) for w in (512, 1024)]
    assert 3.8 < model[1] / model[0] < 4.0  # 4x but for the vocabulary and attention terms


@pytest.mark.parametrize("width, ratio", [(512, 1.0), (1024, 2.0)])
def test_at_2048_tokens_per_step_they_match_the_model_at_512_and_double_it_at_1024(width, ratio):
    # depth 4, seq 128, batch 16, byte vocabulary: one optimizer step per 2048 tokens
    model = training_flops(width, 4, 128, 256, 16, 1)
    assert optimizer_flops("muon", width, 4, 1) / model == pytest.approx(ratio, rel=0.05)


def test_they_vanish_at_large_batches():
    # sweeps/paper.toml's shape: depth 16, seq 2048, vocab 50304, 256 sequences (0.5M tokens) per step
    model = training_flops(2048, 16, 2048, 50304, 256, 1)
    assert optimizer_flops("muon", 2048, 16, 1) / model < 0.02
