"""SIGKILL of a controller running Python trials (tests/trainable_helpers.py's synthetic `train`,
slowed down): no process that ran a trial outlives it (read from the process table), and
`telescope resume` finishes the sweep with one ledger row per trial, keeping the rows recorded
before the kill, with exactly the trial ids the rule asks for."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from telescope.state import sweep_state
from tests.sweep_helpers import (
    committed_parts,
    raw_trials,
    run_cli,
    running,
    stop_with,
    telescope_cmd,
    wait_until,
)
from tests.trainable_helpers import PYTHON_TRAINABLE, synthetic_loss, trainable_spec

PID_FILE = "pid"
SLOW_TRAINABLE = (PYTHON_TRAINABLE.replace("tests.trainable_helpers:train", "tests.run.test_python_resume:slow_train")
                  + "\n[trainable.settings]\nsleep = 0.3\n")


def slow_train(ctx):
    """tests.trainable_helpers.train, `sleep` seconds slower, leaving the id of the process that
    runs it (a Ray worker) in its trial directory."""
    from tests.trainable_helpers import train

    (ctx.trial_dir / PID_FILE).write_text(str(os.getpid()))
    time.sleep(ctx.settings["sleep"])
    return train(ctx)


def trial_processes(out: Path) -> set[int]:
    return {int(p.read_text()) for p in (out / "trials").glob(f"*/{PID_FILE}") if p.read_text()}


def alive(pid: int) -> bool:
    """In the process table and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_dead(pids: set[int], timeout: float = 30) -> set[int]:
    """The processes of `pids` still alive after `timeout` seconds (none, once they have all gone)."""
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_sigkill_leaves_no_python_trial_behind_and_resume_finishes_with_the_same_ids(tmp_path):
    spec = trainable_spec(tmp_path, SLOW_TRAINABLE)  # widths 16 -> 32, 3x3 each: 18 trials
    out = tmp_path / "out"
    with running(telescope_cmd("run", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet")) as proc:
        wait_until(proc, lambda: committed_parts(out) >= 3, "3 recorded trials", timeout=180)
        stop_with(proc, signal.SIGKILL)  # the controller only, as a crash would
        ran = trial_processes(out)
        assert ran and wait_dead(ran) == set()  # checked before `running` cleans up the session
    before = raw_trials(out)
    assert 3 <= len(before) < 18 and before["trial_id"].is_unique

    result = run_cli("resume", str(out), "--num-cpus", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert wait_dead(trial_processes(out)) == set()
    raw = raw_trials(out)
    assert raw["trial_id"].is_unique and len(raw) == 18  # one row per trial, none run twice
    assert set(before["trial_id"]) <= set(raw["trial_id"])
    assert (raw["status"] == "completed").all()
    for r in raw.itertuples():
        assert r.final_loss == synthetic_loss(r.lr, r.init_std, r.width, 16, r.seed)
    # exactly the ids an uninterrupted run records: replaying the rule over these rows finds every
    # trial it asks for (the results are deterministic, so it asks for the same ones), and no other
    _, _, state = sweep_state(out)
    assert state.complete and len(raw) == sum(level.grid.n_points for level in state.levels)
