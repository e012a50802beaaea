import json
import tomllib
from pathlib import Path

import pytest

from telescope.cli import main
from telescope.core import memory
from telescope.core.flops import muon_step_flops, training_flops
from telescope.errors import ConfigError
from telescope.spec.plan import format_plan, plan
from telescope.spec.sweep import load_spec, parse_spec

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def paper_trial_flops(width):
    # sweeps/paper.toml: depth 16, seq 2048, vocab 50304, batch 256, 4000 steps of Muon
    return training_flops(width, 16, 2048, 50304, 256, 4000) + 4000 * muon_step_flops(width, 16)


def test_paper_plan_matches_the_paper_schedule():
    p = plan(load_spec(SWEEPS / "paper.toml"))
    assert [lv.grid for lv in p.levels] == ["8x8", "5x5", "3x3", "3x3"]
    assert [lv.trials for lv in p.levels] == [64, 25, 9, 9] and p.trials == 107
    assert [lv.width for lv in p.levels] == [256, 512, 1024, 2048]
    expected = [n * paper_trial_flops(w) for n, w in zip((64, 25, 9, 9), (256, 512, 1024, 2048))]
    for lv, flops in zip(p.levels, expected):
        assert lv.flops == pytest.approx(flops, rel=1e-12)
    assert p.flops == pytest.approx(sum(expected), rel=1e-12)
    assert sum(lv.share for lv in p.levels) == pytest.approx(1.0)
    # halving the points per axis as the width doubles keeps the first levels' cost about flat
    first = [lv.flops for lv in p.levels[:3]]
    assert max(first) / min(first) < 1.3
    # the base grid run at the calibration width instead
    brute = next(b for b in p.brute_force if b.width == 2048 and b.grid_kind == "base resolution")
    assert brute.trials == 64 and brute.flops == pytest.approx(64 * paper_trial_flops(2048), rel=1e-12)
    assert brute.savings == pytest.approx(1 - sum(expected) / brute.flops) and brute.savings > 0.5
    fine = next(b for b in p.brute_force if b.width == 2048 and b.grid_kind == "finest spacing")
    assert fine.grid == "57x57"  # spacing / 8 over the 8-point range: 7 * 8 + 1 points per axis
    assert p.widening_trials_max == 10 * 10 - 64
    assert p.final_run_flops == pytest.approx(paper_trial_flops(4096), rel=1e-12)


def test_plan_scales_with_seeds_and_is_json():
    d = tomllib.loads((SWEEPS / "demo.toml").read_text())
    one = plan(parse_spec(d))
    assert [lv.trials for lv in one.levels] == [25, 9, 9] and one.vocab_size == 256
    d["seeds"] = 3
    three = plan(parse_spec(d))
    assert [lv.trials for lv in three.levels] == [75, 27, 27]
    assert three.flops == pytest.approx(3 * one.flops)
    assert json.loads(json.dumps(three.to_dict()))["levels"][0]["grid"] == "5x5"


def test_format_plan_reads_as_a_table():
    text = format_plan(plan(load_spec(SWEEPS / "paper.toml")))
    assert "8x8" in text and "107" in text and "up to 2 widening rings" in text
    assert "telescoping saves" in text and "target width 4096" in text


def test_plan_prices_the_worst_case_of_rings_at_later_levels():
    d = tomllib.loads((SWEEPS / "demo.toml").read_text())
    d["seeds"] = 2
    spec = parse_spec(d)
    p = plan(spec)
    assert spec.max_shifts == 2 and p.max_shifts == 2 and p.centre == "drift"
    # each later 3x3 level may grow to 5x5: 16 more points, 2 seeds each, at that level's width
    assert p.shift_trials_max == 2 * 16 * 2
    per_trial = {lv.width: lv.flops_per_trial for lv in p.levels}
    assert p.shift_flops_max == pytest.approx(32 * per_trial[64] + 32 * per_trial[128], rel=1e-12)
    assert p.widening_trials_max == (7 * 7 - 25) * 2  # level 0 keeps max_widenings
    text = format_plan(p)
    assert "up to 2 rings at each later level" in text and "at most 64 more trials" in text
    assert "centred on the fitted drift" in text
    # the paper's rule adds none, and a sampler level never grows
    d["max_shifts"] = 0
    assert plan(parse_spec(d)).shift_trials_max == 0
    d["max_shifts"], d["sampler"] = 1, ["grid", "tpe", "grid"]
    p = plan(parse_spec(d))
    assert p.shift_trials_max == (4 * 4 - 9) * 2
    assert p.shift_flops_max == pytest.approx(14 * p.levels[2].flops_per_trial, rel=1e-12)
    d["sampler"] = ["tpe", "grid", "grid"]
    assert plan(parse_spec(d)).widening_trials_max == 0


def paper_dict():
    return tomllib.loads((SWEEPS / "paper.toml").read_text())


def test_plan_estimates_memory_per_worker_and_the_micro_batch_that_fits():
    spec = load_spec(SWEEPS / "paper.toml")
    p = plan(spec)
    assert p.gpu_memory_gb == 80 and p.memory_device == "cuda"
    last = p.levels[-1]
    cfg = spec.fixed.replace(width=2048)
    assert last.workers == 1 and last.micro_batch == 256  # unset: the whole batch in one pass
    assert last.memory_per_worker == memory.estimate(cfg, 50304, device="cuda").total > 80e9
    assert last.fits is False
    assert last.fitting_micro_batch == memory.fitting_micro_batch(cfg, 50304, 80e9) == 8
    text = format_plan(p)
    assert "assumed 80 GB per GPU, --gpu-memory to change" in text
    assert 'level 3  width  2048:   953 GB (256 rows per pass): more than 80 GB; micro_batch_size = 8 (or "auto") fits' in text
    assert json.loads(json.dumps(p.to_dict()))["levels"][3]["fitting_micro_batch"] == 8
    # a big enough GPU holds every level whole; a small one none, not even a row at a time
    big = plan(spec, gpu_memory_gb=2000)
    assert all(lv.fits for lv in big.levels) and "more than" not in format_plan(big)
    small = plan(spec, gpu_memory_gb=8)
    assert small.levels[-1].fits is False and small.levels[-1].fitting_micro_batch is None
    assert "and so is 1 row per pass: needs more workers or more memory per GPU" in format_plan(small)


def test_plan_memory_follows_the_specs_micro_batch_and_workers():
    d = paper_dict()
    d["training"]["micro_batch_size"] = 4
    d["resources"]["workers"] = [1, 1, 1, 2]
    p = plan(parse_spec(d))
    last = p.levels[-1]
    cfg = parse_spec(d).fixed.replace(width=2048)
    assert last.workers == 2 and last.micro_batch == 4 and last.fits is True
    assert last.memory_per_worker == memory.estimate(cfg, 50304, micro_batch=4, workers=2, device="cuda").total
    assert "(4 rows per pass, 2 workers)" in format_plan(p)
    d["training"]["micro_batch_size"] = "auto"  # what the engine would pick on such a GPU
    auto = plan(parse_spec(d)).levels[-1]
    assert auto.micro_batch == auto.fitting_micro_batch == 8 and auto.fits is True
    d["training"].pop("micro_batch_size")
    d["resources"]["workers"] = [1, 1, 1, 3]  # 256 rows cannot be shared by 3 workers
    with pytest.raises(ConfigError) as err:
        plan(parse_spec(d))
    assert err.value.field == "batch_size" and "3 workers" in err.value.message


def test_plan_makes_no_memory_estimate_for_a_users_trainable():
    d = tomllib.loads((SWEEPS / "demo.toml").read_text())
    d["trainable"] = {"kind": "python", "function": "mypkg.train:train"}
    p = plan(parse_spec(d))
    assert p.memory_device is None and all(lv.memory_per_worker is None for lv in p.levels)
    assert "memory: no estimate for your own trainable" in format_plan(p)


def test_plan_cli_takes_the_gpu_memory(capsys):
    assert main(["plan", str(SWEEPS / "demo.toml"), "--gpu-memory", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpu_memory_gb"] == 40 and out["levels"][0]["memory_per_worker"] > 0
    assert main(["plan", str(SWEEPS / "demo.toml"), "--gpu-memory", "-1"]) == 2
    assert "error: --gpu-memory:" in capsys.readouterr().err
