"""Faults from outside a sweep: SIGTERM, a reader that goes away, a damaged sweep directory, a
sweep that cannot go on, and who on the network can reach the private local Ray.

Real commands in real processes, real signals, a real local Ray and real Parquet."""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from telescope.errors import ConfigError, LedgerError, Terminated
from telescope.store.directory import load_sweep_dir
from telescope.store.ledger import Ledger
from tests.cluster_helpers import LISTEN, socket_inodes, tcp_sockets
from tests.sweep_helpers import (
    ROOT,
    committed_parts,
    raw_trials,
    run_cli,
    telescope_cmd,
    tree_digest,
    write_spec,
)

# ---------------------------------------------------------------------------- processes and sockets


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return rest[0], int(rest[1]), int(rest[19])


def descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`, as pid -> start time (so that a reused pid is not taken for it).

    The processes a driver's ray.init starts (GCS, raylet, dashboard, monitors) are its children;
    the raylet's are the workers and agents."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            children.setdefault(stat[1], []).append((int(name), stat[2]))
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


def program(pid: int) -> str:
    """What a process runs: "gcs_server", "raylet", "ray::IDLE" (a worker), "python", ..."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"
    return argv0 if argv0.startswith("ray::") else os.path.basename(argv0.split(" ")[0])


def survivors(processes: dict[int, int], within_s: float) -> list[str]:
    """Which of `processes` (pid -> start time) still run after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        left = [pid for pid, started in processes.items()
                if (stat := _stat(pid)) is not None and stat[2] == started and stat[0] != "Z"]
        if not left or time.monotonic() > deadline:
            return [f"{pid} {program(pid)}" for pid in left]
        time.sleep(0.1)


def _udp_sockets() -> dict[int, str]:
    """socket inode -> local IP, for every bound IPv4 and IPv6 UDP socket on the machine."""
    out = {}
    for name, family in (("/proc/net/udp", socket.AF_INET), ("/proc/net/udp6", socket.AF_INET6)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            raw = bytes.fromhex(fields[1].split(":")[0])
            if family == socket.AF_INET6:  # four little-endian 32-bit words
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
            else:
                raw = raw[::-1]
            out[int(fields[9])] = socket.inet_ntop(family, raw)
    return out


def listening(pids: list[int]) -> list[tuple[str, str, str]]:
    """(program, protocol, local IP) of every TCP socket listening, and every UDP socket bound,
    in the processes `pids`."""
    tcp, udp = tcp_sockets(), _udp_sockets()
    found = []
    for pid in pids:
        for inode in socket_inodes(pid):
            if inode in tcp and tcp[inode].state == LISTEN:
                found.append((program(pid), "tcp", tcp[inode].local_ip))
            elif inode in udp:
                found.append((program(pid), "udp", udp[inode]))
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # "::ffff:127.0.0.1": a dual-stack socket on IPv4 loopback
    return address.is_loopback


def wait_for_parts(proc: subprocess.Popen, out: Path, parts: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while committed_parts(out) < parts:
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before {parts} trials were recorded: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {parts} trials recorded within {timeout} s")
        time.sleep(0.05)


def stop_group(proc: subprocess.Popen) -> None:
    """Whatever a failed test left of the command and its Ray (each runs in its own session)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(telescope_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)


def committed_files(out: Path) -> dict[str, str]:
    """sha256 of every committed ledger part (trials and curves), by relative path."""
    return {name: digest for name, digest in tree_digest(out).items()
            if name.split("/")[-1].startswith("part-")}


# ---------------------------------------------------------------------------- a finished sweep


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> SimpleNamespace:
    """One uninterrupted tiny sweep (widths 16 -> 32) by `telescope run` on its private local Ray,
    with the sockets that Ray's processes held while the trials ran."""
    tmp = tmp_path_factory.mktemp("reference")
    spec = write_spec(tmp)
    out = tmp / "out"
    proc = subprocess.Popen(telescope_cmd("run", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        wait_for_parts(proc, out, 1)  # trials have run: the workers are up beside GCS and raylet
        tree = descendants(proc.pid)
        sockets = listening([proc.pid, *tree])
        programs = sorted({program(pid) for pid in tree})
        _, stderr = proc.communicate(timeout=300)
    finally:
        stop_group(proc)
    assert proc.returncode == 0, stderr
    return SimpleNamespace(spec=spec, out=out, sockets=sockets, programs=programs)


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
    proc = start("run", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet")
    try:
        wait_for_parts(proc, out, 2)
        tree = descendants(proc.pid)
        committed = committed_files(out)
        os.kill(proc.pid, signal.SIGTERM)  # the driver only, as `kill` or Kubernetes sends it
        signalled = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        stop_group(proc)
    assert proc.returncode == 143, stderr
    assert took < 15, f"took {took:.1f} s to stop"
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr  # Ray's C++ dump
    lines = stderr.splitlines()
    assert lines == [f"telescope: terminated; continue with: telescope resume {out}"], stderr
    assert survivors(tree, within_s=10) == [], "the run's trials or Ray outlived it"
    after = committed_files(out)
    assert {name: after.get(name) for name in committed} == committed, "a committed part changed"

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
    proc = start("compare", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet")
    try:
        wait_for_parts(proc, out, 1)
        tree = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        _, stderr = proc.communicate(timeout=90)
        took = time.monotonic() - signalled
    finally:
        stop_group(proc)
    assert proc.returncode == 143, stderr
    # Looser than for the driver alone: with its raylet and GCS gone, Ray's driver shutdown
    # waits out its own timeouts (about 8 s) before it returns.
    assert took < 30, f"took {took:.1f} s to stop"
    # a study continues by running it again: it skips every recorded trial
    assert stderr.splitlines() == [f"telescope: terminated; continue with: telescope compare {spec} --out {out}"]
    assert survivors(tree, within_s=10) == []


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


def test_a_sweep_that_cannot_go_on_is_one_line_exit_3(tmp_path):
    """Learning rates so high that every trial diverges within a few steps: level 0 has no
    optimum, so the sweep stops, and says why in one line."""
    spec = write_spec(tmp_path, steps=40)
    text = spec.read_text()
    assert "low = 0.003\nhigh = 0.03" in text
    spec.write_text(text.replace("low = 0.003\nhigh = 0.03", "low = 300\nhigh = 3000", 1))
    result = run_cli("run", str(spec), "--out", str(tmp_path / "out"), "--num-cpus", "2", "--quiet")
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
