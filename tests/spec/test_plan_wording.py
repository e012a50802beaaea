"""`plan` against brute force reads true at both extremes, and prices Muon's Newton-Schulz FLOPs."""

from __future__ import annotations

import pytest

from telescope.core.contract import BYTE_VOCAB
from telescope.core.flops import optimizer_flops, training_flops
from telescope.spec.plan import format_plan, plan, savings_phrase
from telescope.spec.sweep import load_spec
from tests.sweep_helpers import write_spec


@pytest.mark.parametrize("savings, words", [
    (0.448, "telescoping saves 44.8%"),
    (0.999, "telescoping saves 99.9%"),
    (0.99951, "telescoping costs < 0.1% of that"),  # not "saves 100.0%"
    (-0.054, "telescoping costs 5.4% more than that"),  # not "saves -5.4%"
    (0.0002, "telescoping costs as much"),
    (-0.0002, "telescoping costs as much"),
])
def test_savings_read_sensibly(savings, words):
    assert savings_phrase(savings) == words


def brute(p, kind, width):
    return next(b for b in p.brute_force if b.grid_kind == kind and b.width == width)


def test_a_sweep_dearer_than_brute_force_says_so(tmp_path):
    # two 3x3 levels (16, 32): telescoping runs the 3x3 grid at 32 and at 16 too
    spec = load_spec(write_spec(tmp_path))
    p = plan(spec)
    base = brute(p, "base resolution", 32)
    assert base.savings < 0
    text = format_plan(p)
    assert f"telescoping costs {-base.savings:.1%} more than that" in text
    assert "saves -" not in text


def test_a_sweep_far_below_brute_force_says_so(tmp_path):
    path = write_spec(tmp_path)
    path.write_text(path.read_text().replace("target_width = 256", "target_width = 8192"))
    p = plan(load_spec(path))
    assert 1 - brute(p, "finest spacing", 8192).savings < 0.001
    text = format_plan(p)
    assert "telescoping costs < 0.1% of that" in text and "100.0%" not in text


def test_costs_include_newton_schulz_where_muon_runs(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    fixed = spec.fixed
    p = plan(spec)

    def model(width):
        return training_flops(width, fixed.depth, fixed.seq_len, BYTE_VOCAB, fixed.batch_size, fixed.steps,
                              fixed.mlp_ratio)

    def ns(width):
        return optimizer_flops("muon", width, fixed.depth, fixed.steps, fixed.mlp_ratio)

    for lv in p.levels:
        assert lv.optimizer_flops_per_trial == ns(lv.width) > 0
        assert lv.flops_per_trial == pytest.approx(model(lv.width) + ns(lv.width), rel=1e-12)
    assert p.optimizer_flops == pytest.approx(sum(lv.trials * ns(lv.width) for lv in p.levels), rel=1e-12)
    for b in p.brute_force:
        assert b.flops == pytest.approx(b.trials * (model(b.width) + ns(b.width)), rel=1e-12)
    assert p.final_run_flops == pytest.approx(model(spec.target_width) + ns(spec.target_width), rel=1e-12)
    assert "model + Muon's Newton-Schulz" in format_plan(p)


def test_adamw_costs_are_model_flops(tmp_path):
    path = write_spec(tmp_path)
    path.write_text(path.read_text().replace('device = "cpu"', 'device = "cpu"\noptimizer = "adamw"'))
    p = plan(load_spec(path))
    assert p.optimizer_flops == 0 and all(lv.optimizer_flops_per_trial == 0 for lv in p.levels)
    text = format_plan(p)
    assert "model FLOPs (vocab 256)" in text and "Newton-Schulz" not in text


def test_a_users_trainable_is_said_to_be_priced_as_the_built_in_gpt_of_its_shape():
    from tests.sweep_helpers import ROOT

    custom, builtin = (plan(load_spec(ROOT / "sweeps" / name)) for name in ("custom-python.toml", "demo.toml"))
    assert custom.flops_of_builtin_shape and not builtin.flops_of_builtin_shape
    assert "priced as the built-in GPT of the spec's [model] shape" in format_plan(custom)
    assert "priced as" not in format_plan(builtin)
    assert custom.to_dict()["flops_of_builtin_shape"] is True
