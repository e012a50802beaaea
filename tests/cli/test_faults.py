"""Faults from outside a sweep: SIGTERM, a reader that goes away, a damaged sweep directory, a
sweep that cannot go on, and who on the network can reach the private local Ray.

Real commands in real processes, real signals, a real local Ray and real Parquet."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from telescope.errors import ConfigError, LedgerError, Terminated
from telescope.store.directory import load_sweep_dir
from telescope.store.ledger import Ledger
from tests.cluster_helpers import descendants, is_loopback, survivors
from tests.sweep_helpers import (
    ROOT,
    committed_parts,
    raw_trials,
    run_cli,
    running,
    stop_with,
    telescope_cmd,
    tree_digest,
    wait_until,
)

# ---------------------------------------------------------------------------- helpers


def committed_files(out: Path) -> dict[str, str]:
    """sha256 of every committed ledger part (trials and curves), by relative path."""
    return {name: digest for name, digest in tree_digest(out).items()
            if name.split("/")[-1].startswith("part-")}


def sigterm_when_recorded(cmd: list[str], out: Path, parts: int, *, group: bool) -> SimpleNamespace:
    """Start `cmd`, SIGTERM it (its driver, or with `group` every process of the job) once `parts`
    trials are recorded: how it stopped, what it had committed, and which of its processes
    outlived it (looked for before anything else cleans up)."""
    with running(cmd) as proc:
        wait_until(proc, lambda: committed_parts(out) >= parts, f"{parts} trials recorded")
        tree = descendants(proc.pid)
        committed = committed_files(out)
        stderr, took = stop_with(proc, signal.SIGTERM, group=group, timeout=90)
        left = survivors(tree, within_s=10)
    return SimpleNamespace(returncode=proc.returncode, stderr=stderr, took=took, committed=committed, left=left)


@pytest.fixture(scope="module")
def reference(cli_sweep) -> SimpleNamespace:
    """The session's uninterrupted sweep by `telescope run` on its private local Ray (see
    tests/conftest.py), with the sockets that Ray's processes held while the trials ran."""
    return cli_sweep


# ---------------------------------------------------------------------------- tests


def test_the_private_local_ray_listens_on_loopback_only(reference):
    """Nothing that `telescope run`'s own Ray starts (GCS, raylet and its object manager, agents,
    workers, the driver's core worker) accepts connections from another machine."""
    programs = reference.programs
    assert {"gcs_server", "raylet"} <= set(programs) and any(p.startswith("ray::") for p in programs), programs
    servers = {name for name, _, _ in reference.sockets}
    assert {"gcs_server", "raylet"} <= servers and any(s.startswith("ray::") for s in servers), reference.sockets
    exposed = [s for s in reference.sockets if not is_loopback(s[2])]
    assert exposed == [], f"listening beyond loopback: {exposed}"


def test_sigterm_stops_the_run_in_seconds_and_resume_finishes_it(reference, tmp_path):
    """`kill PID` (or an eviction) to a running sweep: exit 143 within seconds with one line
    naming the command that continues it, no process of its Ray left, nothing committed touched;
    that command then finishes the sweep with the uninterrupted run's results."""
    spec = tmp_path / "tiny.toml"
    spec.write_text(reference.spec.read_text())
    out = tmp_path / "out"
    stopped = sigterm_when_recorded(telescope_cmd("run", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"),
                                    out, 2, group=False)  # the driver only, as `kill` or Kubernetes sends it
    stderr = stopped.stderr
    assert stopped.returncode == 143, stderr
    assert stopped.took < 15, f"took {stopped.took:.1f} s to stop"
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr  # Ray's C++ dump
    lines = stderr.splitlines()
    assert lines == [f"telescope: terminated; continue with: telescope resume {out}"], stderr
    assert stopped.left == [], "the run's trials or Ray outlived it"
    after = committed_files(out)
    assert {name: after.get(name) for name in stopped.committed} == stopped.committed, "a committed part changed"

    before = raw_trials(out)
    hint = lines[0].split("continue with: ", 1)[1]
    resumed = run_cli(*shlex.split(hint)[1:], "--num-cpus", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    rows = raw_trials(out)
    assert rows["trial_id"].is_unique  # one row per trial: none ran twice
    kept = rows.set_index("trial_id").loc[before["trial_id"], "finished_at"]
    assert kept.tolist() == before["finished_at"].tolist()
    expected = Ledger(reference.out).trials().set_index("trial_id")
    assert set(rows["trial_id"]) == set(expected.index)
    np.testing.assert_array_equal(rows.set_index("trial_id").loc[expected.index, "final_loss"].values,
                                  expected["final_loss"].values)


def test_sigterm_to_the_whole_process_group_stops_a_compare_study_the_same_way(tmp_path):
    """A batch scheduler's preemption signals every process of the job, Ray's own included (and
    the Ray call the driver is in may then fail too, as a SystemError caused by the signal's
    exception); the study still stops with one line, and leaves nothing running."""
    from tests.studies.test_compare import TINY  # the tiny study the compare tests run

    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    out = tmp_path / "study"
    stopped = sigterm_when_recorded(telescope_cmd("compare", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"),
                                    out, 1, group=True)
    assert stopped.returncode == 143, stopped.stderr
    # Looser than for the driver alone: with its raylet and GCS gone, Ray's driver shutdown
    # waits out its own timeouts (about 8 s) before it returns.
    assert stopped.took < 30, f"took {stopped.took:.1f} s to stop"
    # a study continues by running it again: it skips every recorded trial
    assert stopped.stderr.splitlines() == [f"telescope: terminated; continue with: telescope compare {spec} --out {out}"]
    assert stopped.left == []


def into_closed_pipe(*args: str, unbuffered: bool) -> subprocess.CompletedProcess:
    """`telescope ARGS` with stdout a pipe whose reader has already gone, as `| head` leaves it.

    Buffered (stdout to a pipe, Python's default), the output meets the closed pipe in the flush
    at interpreter exit; unbuffered, in the command's own print()."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(telescope_cmd(*args), stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=env, timeout=120, check=False)
    finally:
        os.close(write)


@pytest.mark.parametrize("unbuffered", [False, True], ids=["at-exit", "in-print"])
@pytest.mark.parametrize("command", ["status", "plan"])
def test_output_into_a_closed_pipe_is_silent(reference, command, unbuffered):
    target = reference.out if command == "status" else reference.spec
    result = into_closed_pipe(command, str(target), unbuffered=unbuffered)
    assert result.stderr == "" and result.returncode == 141, result.stderr  # 141: as if killed by SIGPIPE


def test_status_piped_into_head(reference):
    """The everyday case; whether the pipe closes before status is done writing is up to timing."""
    pipeline = f"set -o pipefail; {shlex.join(telescope_cmd('status', str(reference.out)))} | head -3"
    result = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            check=False)
    assert result.stderr == "" and result.returncode in (0, 141), result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_a_garbled_sweep_json_is_one_line_exit_2_and_left_alone(reference, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(reference.out, damaged)
    (damaged / "sweep.json").write_text("{ this is not json")
    with pytest.raises(LedgerError):  # what the commands below meet: the store's damaged-directory error
        load_sweep_dir(damaged)
    before = tree_digest(damaged)
    for args in (["status", str(damaged)], ["export", str(damaged)], ["resume", str(damaged), "--num-cpus", "1"]):
        result = run_cli(*args, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("telescope: error: ") and "sweep.json" in lines[0], lines
    assert tree_digest(damaged) == before


def test_a_sweep_that_cannot_go_on_is_one_line_exit_3(diverged_sweep):
    """Learning rates so high that every trial diverges within a few steps: level 0 has no
    optimum, so the sweep stops, and says why in one line."""
    result = diverged_sweep.result
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("telescope: stopped: sweep 'tiny'"), lines
    assert "diverged" in lines[0]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"poll_interval_s": 0}, ValueError),
        ({"poll_interval_s": "1"}, TypeError),
        ({"max_retries": -1}, ValueError),
        ({"max_retries": 1.5}, TypeError),
    ],
)
def test_bad_dispatcher_arguments_are_bugs_not_user_errors(kwargs, error):
    from telescope.run.dispatch import Dispatcher  # raises before any Ray starts

    with pytest.raises(error) as err:
        Dispatcher(**kwargs)
    assert not isinstance(err.value, ConfigError)


def test_the_dispatcher_handles_sigterm_only_while_open():
    """ray.init puts Ray's own SIGTERM handler in; the dispatcher replaces it with one raising
    Terminated, and puts back on shutdown the handler from before it."""
    from telescope.run.dispatch import Dispatcher

    before = signal.getsignal(signal.SIGTERM)
    with Dispatcher(num_cpus=1):
        assert signal.getsignal(signal.SIGTERM) == Terminated.handler
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(ConfigError):  # the size of a local Ray is the user's to choose: their error
        Dispatcher(num_cpus=-1)
