"""A level with no optimum stops the sweep with its own exit code and the trials' own causes:
failures name their errors with counts, most common first; only divergence blames the ranges."""

from __future__ import annotations

import json

from telescope.errors import NoOptimumError
from telescope.spec.sweep import load_spec
from telescope.state import replay
from tests.sweep_helpers import run_cli, write_spec


def _failed_rows(spec, errors):
    pending = replay(spec, {}).pending
    rows = {}
    for t, error in zip(pending.missing, errors):
        rows[t.trial_id] = {"trial_id": t.trial_id, "level": 0, "seed": t.seed, "status": "failed",
                            "final_loss": float("nan"), "error": error, **t.point}
    return rows


def test_a_failed_level_names_its_trials_errors_most_common_first(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    errors = ["OSError: disk full"] * 2 + ["RuntimeError: CUDA out of memory"] * 7
    state = replay(spec, _failed_rows(spec, errors))
    assert not state.complete and state.pending is None
    assert state.stopped.startswith("every trial at level 0 (width 16) failed")
    assert "7x RuntimeError: CUDA out of memory; 2x OSError: disk full" in state.stopped
    assert "axes.lr" not in state.stopped and "learning-rate range" not in state.stopped


def test_a_diverged_level_blames_the_ranges():
    err = NoOptimumError(2, 128, diverged=9)
    assert "diverged" in str(err) and "learning-rate range" in str(err)
    mixed = NoOptimumError(2, 128, diverged=6, failed=3, errors={"E: boom": 3})
    assert "6 diverged, 3 failed (3x E: boom)" in str(mixed)


def test_a_sweep_whose_trials_all_diverge_stops_with_exit_3_and_says_so(diverged_sweep):
    result = diverged_sweep.result  # every learning rate far too high: see tests/conftest.py
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "every trial at level 0" in line and "diverged" in line and "learning-rate range" in line
    assert "Traceback" not in result.stderr
    status = json.loads(run_cli("status", str(diverged_sweep.out), "--json").stdout)
    assert status["levels"][0]["diverged"] >= 1 and "diverged" in status["stopped"]
