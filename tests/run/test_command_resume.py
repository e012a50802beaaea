"""SIGKILL and Ctrl-C of a controller running command trials (tests/trainable_command.py): none of
the commands' processes remain (read from the process table), and `resume` finishes the sweep with
one row per trial."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.sweep_helpers import ROOT, committed_parts, raw_trials, run_cli, telescope_cmd, terminal_cmd
from tests.trainable_helpers import command_trainable, synthetic_loss, trainable_spec, wait_for, wait_gone


def test_ctrl_c_and_sigkill_leave_no_command_behind_and_resume_finishes(tmp_path):
    spec = trainable_spec(tmp_path, command_trainable(sleep=0.2))  # widths 16 -> 32
    out = tmp_path / "out"
    marker = str(out / "trials")
    run = [str(spec) if a == "SPEC" else a for a in ("run", "SPEC", "--out", str(out), "--num-cpus", "2", "--quiet")]

    # Ctrl-C while commands run: exit 130, every command gone
    proc = subprocess.Popen(terminal_cmd(*run), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for(marker)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130, proc.stderr.read().decode()
        assert "telescope resume" in proc.stderr.read().decode()
        assert wait_gone(marker) == []
    finally:
        _stop(proc)

    # SIGKILL of the controller alone, mid-level: Ray's processes go with it, and so do the commands
    parts = committed_parts(out)
    proc = subprocess.Popen(telescope_cmd(*run), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while committed_parts(out) < parts + 3:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        wait_for(marker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert wait_gone(marker, timeout=30) == []
    finally:
        _stop(proc)

    result = run_cli("resume", str(out), "--num-cpus", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert wait_gone(marker) == []
    raw = raw_trials(out)
    assert raw["trial_id"].is_unique and len(raw) == 18  # one row per trial, none run twice
    assert (raw["status"] == "completed").all()
    for r in raw.itertuples():
        assert r.final_loss == synthetic_loss(r.lr, r.init_std, r.width, 16, r.seed)


def _stop(proc: subprocess.Popen) -> None:
    """Whatever is left of a driver and of the Ray it started in its session."""
    if proc.poll() is None:
        proc.kill()
    with_stderr = proc.stderr
    if with_stderr is not None:
        with_stderr.close()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
