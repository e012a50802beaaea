"""Optuna levels: distinct points counted from the ledger, never a point run twice, start-up sized
to the level, and interrupted levels (SIGKILL, Ctrl-C; one and two seeds) that resume to exactly
their budget."""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path

import pytest

from tests.sweep_helpers import (
    raw_trials, rows_at_level, run_cli, running, stop_with, telescope_cmd, terminal_cmd, wait_until, write_spec,
)
from telescope.run.levels import OptunaLevel
from telescope.run.samplers import JOURNAL_FILE, make_sampler
from telescope.spec.samplers import sampler_info
from telescope.spec.sweep import load_spec
from telescope.state import point_key, replay
from telescope.store.ledger import Ledger

BUDGET = 9  # the tiny spec's level 1: a 3x3 grid's worth of points


def _row(t, loss: float) -> dict:
    return {"trial_id": t.trial_id, "level": t.level, "seed": t.seed, "status": "completed",
            "final_loss": loss, "sampler_trial": t.sampler_trial, **t.point}


def _bowl(point) -> float:
    return 2.0 + (math.log(point["lr"]) - math.log(0.01)) ** 2 + (math.log(point["init_std"]) - math.log(0.02)) ** 2


def _at_level_1(tmp_path: Path, seeds: int):
    """A tiny grid->tpe spec and ledger rows that finish its level 0, as the ledger would hold them."""
    spec = load_spec(write_spec(tmp_path, sampler='["grid", "tpe"]', seeds=seeds))
    rows: dict = {}
    state = replay(spec, rows)
    while state.pending is not None and state.pending.level == 0:
        for t in state.pending.missing:
            rows[t.trial_id] = _row(t, _bowl(t.point))
        state = replay(spec, rows)
    assert state.pending is not None and state.pending.level == 1
    return spec, rows, state.pending


def _run(level: OptunaLevel, rows: dict, n_points: int | None = None) -> list:
    """Record the trials `level` asks for (all of them, or those of its first `n_points` points)."""
    done = []
    for t in level.trials():
        if n_points is not None and len({point_key(d.point) for d in done} | {point_key(t.point)}) > n_points:
            break
        rows[t.trial_id] = _row(t, _bowl(t.point))
        level.recorded(t, rows[t.trial_id])
        done.append(t)
    return done


@pytest.mark.parametrize("seeds", [1, 2])
def test_a_rebuilt_sampler_that_proposes_recorded_points_again_never_runs_them_twice(tmp_path, seeds):
    """The severe resume bug: a sampler rebuilt on resume proposes its first points again. Here the
    study is lost entirely, so the new one replays exactly the first run's stream; the level must
    tell those repeats what the ledger knows and spend its asks on new points only."""
    spec, rows, pending = _at_level_1(tmp_path, seeds)
    first = _run(OptunaLevel(spec, pending, rows, tmp_path), rows, n_points=3)
    first_points = {point_key(t.point) for t in first}
    assert len(first_points) == 3 and len(first) == 3 * seeds
    (tmp_path / JOURNAL_FILE).unlink()  # the study is gone; its sampler restarts from the same stream

    pending = replay(spec, rows).pending
    assert pending.level == 1 and len(pending.recorded) == 3 * seeds
    level = OptunaLevel(spec, pending, rows, tmp_path)
    second = _run(level, rows)
    second_points = {point_key(t.point) for t in second}
    assert not second_points & first_points, "a recorded point was run again"
    assert len(second) == (BUDGET - 3) * seeds and len(second_points) == BUDGET - 3
    asked = level.study.study.get_trials(deepcopy=False)
    repeats = [t for t in asked if point_key(t.params) in first_points]
    assert len(repeats) == 3, "the rebuilt sampler did not replay its stream: the test lost its teeth"
    assert all(t.state.name == "COMPLETE" for t in repeats)  # told the loss the ledger holds
    state = replay(spec, rows)
    assert state.complete and len(state.levels[1].observations) == BUDGET * seeds


def test_a_point_recorded_for_some_seeds_runs_only_its_missing_seeds(tmp_path):
    spec, rows, pending = _at_level_1(tmp_path, seeds=2)
    level = OptunaLevel(spec, pending, rows, tmp_path)
    it = level.trials()
    t = next(it)  # the first point's first seed lands; the controller dies before the second
    rows[t.trial_id] = _row(t, _bowl(t.point))
    it.close()
    pending = replay(spec, rows).pending
    again = list(OptunaLevel(spec, pending, rows, tmp_path).trials())
    same_point = [a for a in again if point_key(a.point) == point_key(t.point)]
    assert [a.seed for a in same_point] == [s for s in spec.seeds if s != t.seed]
    assert same_point[0].sampler_trial == t.sampler_trial
    assert len({point_key(a.point) for a in again}) == BUDGET


def test_a_sampler_with_nothing_new_to_offer_stops_with_a_reason(tmp_path):
    """A box of one value: every ask repeats the point the level has, so the level says why it
    has nothing to run instead of asking forever (the controller then stops the sweep with it)."""
    spec, rows, pending = _at_level_1(tmp_path, seeds=1)
    axes = tuple(dataclasses.replace(g, spacing=0.0) for g in pending.step.grid.axes)
    step = dataclasses.replace(pending.step, grid=dataclasses.replace(pending.step.grid, axes=axes))
    level = OptunaLevel(spec, dataclasses.replace(pending, step=step), rows, tmp_path)
    started = time.monotonic()
    trials = _run(level, rows)
    assert len(trials) == 1 and time.monotonic() - started < 60
    assert level.stall_reason and "already has" in level.stall_reason and "1 of 9" in level.stall_reason


def test_samplers_start_up_is_sized_to_the_level_and_plan_says_what_each_level_does(tmp_path):
    tpe = make_sampler(sampler_info("tpe"), BUDGET, seed=0)
    gp = make_sampler(sampler_info("gp"), BUDGET, seed=0)
    assert tpe._n_startup_trials == 3 and gp._n_startup_trials == 3  # not Optuna's 10 of 9
    assert make_sampler(sampler_info("tpe"), 64, seed=0)._n_startup_trials == 10
    plan = run_cli("plan", str(write_spec(tmp_path, sampler='["grid", "tpe"]')))
    assert plan.returncode == 0, plan.stderr
    assert "level 1: tpe - 3 random start-up points, then 6 TPE-guided points" in plan.stdout
    assert "level 0: grid - 9 grid points" in plan.stdout


def test_a_sampler_that_cannot_act_within_its_level_is_refused_at_plan(tmp_path):
    spec = write_spec(tmp_path, sampler='["grid", "cmaes"]')
    for command in (["plan", str(spec)], ["run", str(spec), "--out", str(tmp_path / "out")]):
        result = run_cli(*command)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert "sampler: cmaes at level 1 has 9 points" in result.stderr
    assert not (tmp_path / "out").exists()


def test_interrupted_optuna_level_resumes_to_exactly_its_budget(tmp_path):
    """Interrupted again and again inside an Optuna level, each time resumed; the last resume
    finishes with one row per trial and exactly the level's budget of distinct points."""
    # (level-1 rows committed, signal): SIGKILL between the two seeds of a point, Ctrl-C to the whole
    # group as a terminal sends it, and a late SIGKILL with some asks never recorded
    seeds, interruptions = 2, [(3, signal.SIGKILL), (8, signal.SIGINT), (14, signal.SIGKILL)]
    spec = write_spec(tmp_path, sampler='["grid", "tpe"]', seeds=seeds)
    out = tmp_path / "out"
    command = ["run", str(spec), "--out", str(out)]
    for after, sig in interruptions:
        make = terminal_cmd if sig == signal.SIGINT else telescope_cmd
        with running(make(*command, "--num-cpus", "2", "--quiet")) as proc:
            wait_until(proc, lambda: rows_at_level(out, 1) >= after, f"{after} level-1 rows")
            stop_with(proc, sig, group=sig == signal.SIGINT)  # Ctrl-C reaches the whole group
        assert proc.returncode == (130 if sig == signal.SIGINT else -sig)
        assert after <= rows_at_level(out, 1) < BUDGET * seeds
        assert raw_trials(out)["trial_id"].is_unique
        command = ["resume", str(out)]

    result = run_cli("resume", str(out), "--num-cpus", "2", "--quiet", timeout=240)
    assert result.returncode == 0, result.stderr
    raw = raw_trials(out)
    assert raw["trial_id"].is_unique  # one row per trial, never a trial recorded twice
    level1 = Ledger(out).trials().query("level == 1")
    points = level1.groupby(list(load_spec(spec).axis_names)).seed.apply(sorted)
    assert len(points) == BUDGET  # exactly the level's budget of distinct points
    assert all(list(s) == list(range(seeds)) for s in points)  # each with every seed
    assert len(level1) == BUDGET * seeds
    assert '"complete": true' in run_cli("status", str(out), "--json").stdout
