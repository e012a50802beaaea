"""The export as a recipe for the user's run: every optimizer setting the learning rates only make
sense with, the schedule, the horizon and batch they were tuned at; and every format reads back."""

from __future__ import annotations

import json
import math

import pytest

from telescope.core.optimizers import ADAMW_BETAS, ADAMW_EPS, MUON_SETTINGS, WEIGHT_DECAY_MODE, optimizer_settings
from telescope.core.scaling import GROUPS, scaling_for
from telescope.errors import ConfigError
from telescope.read.export import FORMATS, _drop_none, export, load_export, render
from telescope.state import sweep_state
from tests.sweep_helpers import run_cli

WIDTH = 128  # beyond the calibration width (64), as a user would export


@pytest.fixture(scope="module")
def doc(real_sweep):
    return export(real_sweep, WIDTH, extrapolate=True)


def _same(a, b) -> bool:
    """Equal documents, NaN equal to NaN (JSON text compares them as the same token)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_groups_are_named_alike_and_agree_with_scaling_and_the_optimizer_constants(real_sweep, doc):
    spec, _, _ = sweep_state(real_sweep)
    at = doc["at_width"]
    assert set(at["lr"]) == set(at["weight_decay"]) == set(at["optimizer_of_group"]) == set(GROUPS)
    s = scaling_for(spec.trial_config(WIDTH, doc["hyperparameters"], spec.seeds[0]))
    assert at["lr"] == s.lr and at["weight_decay"] == s.weight_decay
    assert at["width_mult"] == WIDTH / spec.base_width
    # the tiny sweep is Muon: Muon takes the hidden matrices, AdamW the rest, and every group is in one
    assert spec.fixed.optimizer == "muon"
    assert at["optimizer_of_group"] == {"hidden": "muon", "embedding": "adamw", "norm": "adamw", "readout": "adamw"}
    opts = doc["optimizers"]
    assert opts["muon"]["groups"] == ["hidden"] and opts["adamw"]["groups"] == ["embedding", "norm", "readout"]
    muon = {k: v for k, v in opts["muon"].items() if k not in ("groups", "weight_decay", "ns_dtype")}
    assert muon == {**MUON_SETTINGS, "ns_coefficients": list(MUON_SETTINGS["ns_coefficients"])}
    # the tiny sweep runs on the CPU, where Newton-Schulz "auto" is fp32
    assert opts["muon"]["ns_dtype"] == spec.trial_config(spec.base_width, doc["hyperparameters"], 0).resolved_ns_dtype
    assert opts["muon"]["ns_dtype"] == "fp32"
    assert muon["adjust_lr_fn"] == "match_rms_adamw"
    assert opts["adamw"]["betas"] == list(ADAMW_BETAS) and opts["adamw"]["eps"] == ADAMW_EPS
    assert opts["muon"]["weight_decay"] == opts["adamw"]["weight_decay"] == WEIGHT_DECAY_MODE == "coupled"
    assert "lr * wd" in opts["note"]
    # the extrapolated values' groups are laid out the same way
    extra = doc["extrapolated"]["at_width"]
    assert {k: set(v) if isinstance(v, dict) else None for k, v in extra.items()} == \
        {k: set(v) if isinstance(v, dict) else None for k, v in at.items()}


def test_an_adamw_sweep_exports_no_muon_settings():
    opts = optimizer_settings("adamw")
    assert "muon" not in opts and opts["adamw"]["groups"] == list(GROUPS)
    assert "adjust_lr_fn" not in opts["note"]


def test_the_schedule_and_the_tuning_horizon_are_the_trials_own(real_sweep, doc):
    spec, _, _ = sweep_state(real_sweep)
    cfg = spec.trial_config(WIDTH, doc["hyperparameters"], spec.seeds[0])
    sched = doc["schedule"]
    assert (sched["warmup_frac"], sched["warmup_steps"], sched["final_lr_frac"], sched["steps"]) == (
        cfg.warmup_frac, cfg.warmup_steps, cfg.final_lr_frac, cfg.steps)
    assert sched["shape"] == "linear warmup then cosine decay"
    tuned = doc["tuned_at"]
    assert (tuned["steps"], tuned["batch_size"], tuned["seq_len"]) == (cfg.steps, cfg.batch_size, cfg.seq_len)
    assert tuned["tokens_per_step"] == cfg.batch_size * cfg.seq_len
    assert tuned["tokens"] == cfg.steps * cfg.batch_size * cfg.seq_len
    assert "horizon" in tuned["note"] and "batch" in tuned["note"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_as_the_document(tmp_path, doc, fmt):
    path = tmp_path / f"export.{fmt}"
    path.write_text(render(doc, fmt))
    back = load_export(path)
    # TOML has no null: keys whose value was None are left out, and read back absent
    assert _same(back, _drop_none(doc) if fmt == "toml" else doc)
    assert back["at_width"]["lr"]["hidden"] == doc["at_width"]["lr"]["hidden"]


def test_the_cli_writes_a_file_that_reads_back(tmp_path, real_sweep, doc):
    path = tmp_path / "recipe.toml"
    result = run_cli("export", str(real_sweep), "--width", str(WIDTH), "--extrapolate", "--format", "toml",
                     "-o", str(path))
    assert result.returncode == 0, result.stderr
    assert _same(load_export(path), _drop_none(doc))


def test_load_export_refuses_what_is_not_an_export(tmp_path):
    cases = {"notes.txt": "lr = 1", "broken.json": "{", "other.yaml": "a: 1\n", "empty.toml": ""}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as err:
            load_export(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unreadable"):
        load_export(tmp_path / "missing.json")


def test_nan_and_none_survive_the_formats_that_hold_them(tmp_path, doc):
    odd = {**doc, "provenance": {**doc["provenance"], "loss": math.nan, "note": None}}
    for fmt in FORMATS:
        path = tmp_path / f"odd.{fmt}"
        path.write_text(render(odd, fmt))
        back = load_export(path)
        assert math.isnan(back["provenance"]["loss"])
        assert ("note" in back["provenance"]) == (fmt != "toml")
