"""A command line as the trainable (tests/trainable_command.py, which knows nothing of telescope):
its faults end as failed trials while the sweep goes on, and a time limit or the death of its
worker leaves none of its processes behind (read from the process table). Ctrl-C, SIGKILL and
resume: tests/run/test_command_resume.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from telescope.api import Sweep
from telescope.run.progress import Progress
from telescope.store.ledger import Ledger
from tests.sweep_helpers import ROOT
from tests.trainable_helpers import command_trainable, processes_with, synthetic_loss, trainable_spec, wait_gone

TIME_LIMIT_S = 6


def test_a_commands_whole_process_group_dies_with_its_worker(tmp_path):
    """No Ray: a process stands in for the worker, runs the hanging corner (a command with a
    grandchild) and is SIGKILLed, as a force-cancelled Ray task's worker is."""
    spec = trainable_spec(tmp_path, command_trainable(faults=True))
    out = tmp_path / "out"
    out.mkdir()
    worker = (
        "from telescope.spec.sweep import load_spec\n"
        "from telescope.run.trainables import Launcher\n"
        f"spec = load_spec({str(spec)!r})\n"
        "point = {'lr': 0.03, 'init_std': 0.04}\n"
        f"fn, arg = Launcher.for_sweep(spec.trainable, {str(out)!r}, None).target('T-hang', "
        "spec.trial_config(16, point, 0), point)\n"
        "fn(arg)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", worker], cwd=ROOT)
    marker = str(out / "trials")
    try:
        deadline = time.monotonic() + 60
        while len(processes_with(marker)) < 3:  # supervisor, command, grandchild
            assert time.monotonic() < deadline and proc.poll() is None, processes_with(marker)
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert wait_gone(marker, timeout=10) == []
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def faults_sweep(tmp_path_factory):
    """One level, 3x3: four points train; the others exit 3, write no result, write bad JSON,
    diverge (and would then hang), or hang with a grandchild past the time limit."""
    tmp = tmp_path_factory.mktemp("command-faults")
    spec = trainable_spec(tmp, command_trainable(faults=True), calibration_width=16, time_limit_s=TIME_LIMIT_S)
    sweep = Sweep.create(spec, tmp / "out")
    state = sweep.run(num_cpus=2, progress=Progress(quiet=True))
    return sweep, state


def test_faulty_commands_fail_their_trials_and_the_sweep_goes_on(faults_sweep):
    sweep, state = faults_sweep
    assert state.complete
    assert state.optimum.point == pytest.approx({"lr": 0.003 * 10**0.5, "init_std": 0.02})
    trials = Ledger(sweep.directory).trials().set_index(["lr", "init_std"]).sort_index()
    assert len(trials) == 9
    lrs, inits = sorted({lr for lr, _ in trials.index}), sorted({i for _, i in trials.index})
    row = {(a, b): trials.loc[(lrs[a], inits[b])] for a in range(3) for b in range(3)}
    exited, no_result, bad_json, hung, diverged = row[0, 0], row[0, 2], row[2, 0], row[2, 2], row[2, 1]
    assert exited["status"] == "failed" and exited["error"].startswith(
        "the command exited with code 3; stderr ends: loading shard 3 of 8 | synthetic failure: shard 3 is corrupt")
    stderr = Path(exited["error"].rsplit("all of it in ", 1)[1].rstrip(")"))
    assert stderr.name == "stderr.log" and "corrupt" in stderr.read_text()
    assert no_result["status"] == "failed" and "exited 0 but wrote no" in no_result["error"]
    assert bad_json["status"] == "failed" and "result.json is not valid JSON" in bad_json["error"]
    assert hung["status"] == "failed" and hung["error"] == f"timed out after {TIME_LIMIT_S} s"
    assert diverged["status"] == "diverged" and diverged["error"] == "loss 160 > 3 x initial 40 at step 2"
    for key in [(0, 1), (1, 0), (1, 1), (1, 2)]:
        r = row[key]
        assert r["status"] == "completed" and r["tokens"] == 5 * 64
        assert r["final_loss"] == synthetic_loss(lrs[key[0]], inits[key[1]], 16, 16, 0)
    curves = Ledger(sweep.directory).curves()
    assert len(curves[curves["trial_id"] == row[1, 1]["trial_id"]]) == 5
    assert wait_gone(str(sweep.directory / "trials")) == []  # the hung command and its grandchild too
