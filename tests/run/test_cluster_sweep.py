"""Real telescoping sweeps on a real multi-node Ray cluster on this machine.

A head (1 CPU, no GPU) and two worker nodes (1 CPU, 1 declared GPU each), each its own raylet,
all on 127.0.0.1 with token auth; `telescope run/resume --address` runs as a separate driver
process with the cluster's driver environment, as a user would run it. The GPUs are declared,
not real: trials still train on the CPU (the spec says device = "cpu"), but Ray places and packs
them by GPU and hands each its GPU ids and CUDA_VISIBLE_DEVICES.

Where a trial runs is read two ways: from the ledger (`node`, `gpu_ids`, `attempt`) and, as an
independent witness, from the processes themselves: Ray titles a worker process that runs a task
"ray::<task name>", and the dispatcher names each task after its trial id, so every process under
a node's raylet titled "ray::L<level>-w<width>-s<seed>-<hash>" is that trial running on that node.

The tests share one cluster and run in file order; the last one kills a worker node for good.
Select with `-m cluster`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.cluster_helpers import ESTABLISHED, LISTEN, socket_inodes, tcp_sockets
from tests.sweep_helpers import (
    ROOT, committed_parts, only_lr_axis, raw_trials, running, start_and_kill, telescope_cmd, wait_until, write_spec,
)
from telescope.state import sweep_state
from telescope.store.ledger import Ledger
from telescope.spec.plan import plan
from telescope.spec.sweep import load_spec
from telescope.run import local_cluster as lc

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="multi-node Ray: Linux only"),
]


# Node death noticed in ~3 s instead of Ray's default ~15 s.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
TRIAL_TITLE = re.compile(r"^ray::(L\d+-w\d+-s\d+-[0-9a-f]+)$")
TIMEOUT = 300  # generous wall-clock bounds: the machine's two cores are shared


@pytest.fixture(scope="module")
def cluster():
    c = lc.LocalCluster(
        workers=2,
        cpus_per_node=1,
        gpus_per_node=1,  # declared, not real
        head_cpus=1,
        head_gpus=0,
        system_config=FAST_HEALTH_CHECKS,
        workdir=ROOT,  # trials resolve the spec's relative paths in the repository
        start_timeout_s=120,
    )
    try:
        c.start()
        yield c
    finally:
        c.stop()


# ------------------------------------------------------------------ helpers


def cluster_spec(tmp_path: Path, *, steps: int, num_cpus: float, num_gpus: float = 0, levels: int = 1,
                 lr_only: bool = False, points: int = 3, extra: str = "") -> Path:
    """tests/sweep_helpers' tiny spec, sized for a 1-CPU-per-node cluster. No widening, so that a
    level's trials are known in advance: 3x3 (or `points` with lr_only) per level."""
    resources = "\n".join(line for line in (f"num_gpus = {num_gpus}" if num_gpus else "", extra) if line)
    path = write_spec(tmp_path, calibration_width=16 << (levels - 1), steps=steps, resources=resources)
    text = path.read_text().replace("num_cpus = 1\n", f"num_cpus = {num_cpus}\n")
    text = text.replace("max_widenings = 1\n", "max_widenings = 0\nmax_shifts = 0\n")
    path.write_text(text)
    return only_lr_axis(path, points) if lr_only else path  # one axis: `points` trials per level


def driver_env(cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(cluster.driver_env())
    return env


def telescope_on(cluster, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`telescope ARGS --address ADDR --quiet` as a driver of the cluster."""
    return subprocess.run(telescope_cmd(*args, "--address", cluster.address, "--quiet"), env=driver_env(cluster),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def node_names(cluster) -> dict[str, str]:
    """Ray node id -> "head" / "worker-0" / "worker-1"."""
    return {n.node_id: n.name for n in cluster.nodes}


def ledger_node(cluster, row) -> str:
    """The cluster node a ledger row names ("hostname (ip) node <id>")."""
    assert " node " in row["node"], row["node"]
    return node_names(cluster)[row["node"].rsplit(" node ", 1)[1]]


def running_trials(cluster) -> dict[str, dict[str, int]]:
    """Node name -> {trial id: pid} of the trials running on it now, read from /proc."""
    table = lc.live_table()
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st[2], []).append(pid)
    found: dict[str, dict[str, int]] = {}
    for node in cluster.nodes:
        if node.killed:
            continue
        stack = [pid for pid, st in table.items() if st[3] == node.pgid]
        members = set(stack)
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in members:
                    members.add(child)
                    stack.append(child)
        trials = {}
        for pid in members:
            if table[pid][0].startswith("ray::"):  # comm: the title, cut to 15 characters
                argv = lc.cmdline(pid)
                m = TRIAL_TITLE.match(argv[0]) if argv else None
                if m:
                    trials[m.group(1)] = pid
        found[node.name] = trials
    return found


class Watch:
    """Samples `running_trials` in a thread; `max_at_once[node]` is the most trials seen together."""

    def __init__(self, cluster, period_s: float = 0.25):
        self.cluster, self.period_s = cluster, period_s
        self.samples: list[tuple[float, dict[str, dict[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), running_trials(self.cluster)))
            self._stop.wait(self.period_s)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def max_at_once(self) -> dict[str, int]:
        best: dict[str, int] = {}
        for _, snap in self.samples:
            for node, trials in snap.items():
                best[node] = max(best.get(node, 0), len(trials))
        return best

    def seen_on(self) -> dict[str, set[str]]:
        """Trial id -> the nodes it was seen running on."""
        where: dict[str, set[str]] = {}
        for _, snap in self.samples:
            for node, trials in snap.items():
                for trial_id in trials:
                    where.setdefault(trial_id, set()).add(node)
        return where


def wait_until_no_trials(cluster, ids: set[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        left = {t: n for n, trials in running_trials(cluster).items() for t in trials if t in ids}
        if not left:
            return
        assert time.monotonic() < deadline, f"trial processes still running: {left}"
        time.sleep(0.2)


def reported_start(cluster, pids: dict[str, int]) -> set[str]:
    """The trials (of `pids`) that have told the controller's start log they started.

    The dispatcher's task first sends `started` to a `_StartLog` actor, in a process of its own;
    a task process holding a TCP connection to that process's server has made that call (it
    calls no other actor), so a retry of it will count as attempt 2.
    """
    log_pids = [pid for n in cluster.nodes if not n.killed for pid in lc.node_processes(n.pgid)
                if (lc.cmdline(pid) or [""])[0].startswith("ray::_StartLog")]
    tcp = tcp_sockets()
    listening = {tcp[i].local_port for pid in log_pids for i in socket_inodes(pid)
                 if i in tcp and tcp[i].state == LISTEN}
    return {
        trial_id for trial_id, pid in pids.items()
        if any(i in tcp and tcp[i].state == ESTABLISHED and tcp[i].remote_port in listening
               for i in socket_inodes(pid))
    }


def assert_one_row_per_trial(out: Path) -> pd.DataFrame:
    """The ledger's trials, after checking the raw Parquet dataset holds each id exactly once."""
    trials = Ledger(out).trials()
    raw = raw_trials(out)
    assert len(raw) == len(trials) == raw["trial_id"].nunique(), raw["trial_id"].value_counts().head()
    return trials


# ------------------------------------------------------------------ GPU placement and packing


def test_half_gpu_trials_run_only_on_gpu_nodes_two_at_a_time(cluster, tmp_path):
    """num_gpus = 0.5: trials land only on the GPU-declaring workers, never the head, two at once
    per 1-GPU node (a quarter CPU each, so the GPU is what limits them: by CPUs alone all five
    would fit at once); the ledger says which node and GPU; training runs on the CPU."""
    spec = cluster_spec(tmp_path, steps=10, num_cpus=0.25, num_gpus=0.5, lr_only=True, points=5)
    out = tmp_path / "out"
    with Watch(cluster) as watch:
        result = telescope_on(cluster, "run", str(spec), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep complete" in result.stdout

    trials = assert_one_row_per_trial(out)
    assert len(trials) == 5 and (trials["status"] == "completed").all()
    assert (trials["device"] == "cpu").all()  # CUDA_VISIBLE_DEVICES set, no CUDA: still trains
    placed = {row["trial_id"]: ledger_node(cluster, row) for _, row in trials.iterrows()}
    assert set(placed.values()) <= {"worker-0", "worker-1"}, placed
    assert (trials["gpu_ids"] == "0").all(), trials["gpu_ids"].tolist()  # each worker's only GPU
    assert (trials["attempt"] == 1).all()

    # The processes agree with the ledger, and show the packing.
    seen = watch.seen_on()
    assert seen, "no trial process was ever seen"
    assert set(seen) <= set(placed)
    for trial_id, nodes in seen.items():
        assert nodes == {placed[trial_id]}, (trial_id, nodes, placed[trial_id])
    at_once = watch.max_at_once()
    assert at_once.get("head", 0) == 0
    assert at_once["worker-0"] <= 2 and at_once["worker-1"] <= 2, at_once
    assert max(at_once["worker-0"], at_once["worker-1"]) == 2, at_once  # two trials did share a GPU


# ------------------------------------------------------------------ per-trial time limit


def test_trials_past_the_time_limit_are_cancelled_on_their_node_and_recorded_as_failed(cluster, tmp_path):
    """Every trial hangs past `time_limit_s` (one whole GPU each, so one per worker node and the
    third waits): each is cancelled on its remote node and recorded as failed with the reason; the
    queued one gets its full limit from its own start; the level runs to its end and the sweep
    stops with one clear line."""
    limit = 3
    spec = cluster_spec(tmp_path, steps=100000, num_cpus=1, num_gpus=1, lr_only=True, points=3,
                        extra=f"time_limit_s = {limit}")
    out = tmp_path / "out"
    with Watch(cluster) as watch:
        result = telescope_on(cluster, "run", str(spec), "--out", str(out))
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]  # stopped, not bad input
    assert "every trial at level 0" in result.stderr and "Traceback" not in result.stderr

    trials = assert_one_row_per_trial(out)
    assert len(trials) == 3 and (trials["status"] == "failed").all()
    assert (trials["error"] == f"timed out after {limit} s").all(), trials["error"].tolist()
    assert trials["wall_time_s"].between(limit, limit + 10).all(), trials["wall_time_s"].tolist()
    assert {ledger_node(cluster, row) for _, row in trials.iterrows()} <= {"worker-0", "worker-1"}
    assert (trials["gpu_ids"] == "0").all()
    # One GPU per node: never two trials on a node at once, so the third ran only after a
    # cancellation freed a GPU, and still had its whole limit.
    assert max(watch.max_at_once().values()) == 1, watch.max_at_once()
    finished = trials["finished_at"].sort_values()
    assert (finished.iloc[-1] - finished.iloc[0]).total_seconds() >= limit * 0.8
    # The cancelled trials' processes are gone from the nodes.
    wait_until_no_trials(cluster, set(trials["trial_id"]), timeout_s=30)


# ------------------------------------------------------------------ the controller dies


def test_controller_sigkilled_mid_level_then_resume_on_the_cluster(cluster, tmp_path):
    """SIGKILL `telescope run --address` while level 0 runs; Ray ends the dead driver's trials;
    `telescope resume --address` finishes the sweep without running any finished trial again."""
    spec = cluster_spec(tmp_path, steps=30, num_cpus=1, levels=2, lr_only=True, points=5)  # CPU trials
    out = tmp_path / "out"
    start_and_kill(spec, out, after_parts=1, timeout=TIMEOUT,
                   ray_args=("--address", cluster.address), env=driver_env(cluster))
    killed_at = pd.Timestamp.now(tz="UTC")
    before = raw_trials(out)
    assert 1 <= len(before) < 5, len(before)  # killed in the middle of level 0
    assert (before["level"] == 0).all()

    # The dead controller's running trials do not outlive it on the cluster.
    level0 = {row.trial_id for row in sweep_state(out)[2].pending.missing}
    wait_until_no_trials(cluster, level0, timeout_s=60)

    result = telescope_on(cluster, "resume", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep complete" in result.stdout

    trials = assert_one_row_per_trial(out)
    _, _, state = sweep_state(out)
    assert state.complete and len(state.levels) == 2
    assert len(trials) == plan(load_spec(spec)).trials and sorted(trials["level"].unique()) == [0, 1]
    assert (trials["status"] == "completed").all()
    # Nothing that finished before the kill ran again: its row is the same row.
    cols = ["trial_id", "finished_at", "wall_time_s", "final_loss", "node"]
    kept = trials.set_index("trial_id").loc[before["trial_id"], cols[1:]].reset_index()
    pd.testing.assert_frame_equal(kept, before[cols].reset_index(drop=True), check_dtype=False)
    after = trials[~trials["trial_id"].isin(before["trial_id"])]
    assert len(after) == len(trials) - len(before) and (after["finished_at"] > killed_at).all()
    assert {ledger_node(cluster, row) for _, row in trials.iterrows()} <= {"head", "worker-0", "worker-1"}


# ------------------------------------------------------------------ a worker node dies (last: it stays dead)


def test_worker_node_killed_mid_level_its_trials_finish_on_the_survivor(cluster, tmp_path):
    """Once some trials are recorded, SIGKILL worker-0 (raylet and all) while trials run on it;
    the sweep completes, those trials are retried on worker-1, every trial has one final row and
    none failed."""
    spec = cluster_spec(tmp_path, steps=30, num_cpus=0.5, num_gpus=0.5, lr_only=True, points=7)
    out = tmp_path / "out"
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    seen: dict[str, Any] = {}

    def recorded_and_started_on_worker_0() -> bool:
        """A recorded trial, and a trial on worker-0 that has reported its start."""
        if committed_parts(out) < 1:
            return False
        seen["on_doomed"] = running_trials(cluster)["worker-0"]
        seen["started"] = reported_start(cluster, seen["on_doomed"])
        return bool(seen["started"])

    cmd = telescope_cmd("run", str(spec), "--out", str(out), "--address", cluster.address, "--quiet")
    # files, not pipes: a full pipe would stall the driver
    with open(stdout, "w") as o, open(stderr, "w") as e, \
            running(cmd, env=driver_env(cluster), stdout=o, stderr=e) as proc:
        wait_until(proc, recorded_and_started_on_worker_0, "a moment with a recorded trial and one running on worker-0",
                   TIMEOUT, log=stderr, poll_s=0.2)
        doomed = cluster.kill_worker(0)
        killed_at = pd.Timestamp.now(tz="UTC")
        recorded_before = set(raw_trials(out)["trial_id"])
        proc.wait(timeout=TIMEOUT)
    on_doomed, started = seen["on_doomed"], seen["started"]
    assert proc.returncode == 0, stderr.read_text()[-3000:]
    assert "sweep complete" in stdout.read_text()

    trials = assert_one_row_per_trial(out)
    assert len(trials) == 7 and (trials["status"] == "completed").all(), trials[["status", "error"]]
    node = {row["trial_id"]: ledger_node(cluster, row) for _, row in trials.iterrows()}
    attempt = dict(zip(trials["trial_id"], trials["attempt"]))
    # The trials that were running on worker-0 finished on worker-1; those already started
    # there count a second attempt.
    assert not set(on_doomed) & recorded_before
    for trial_id in on_doomed:
        assert node[trial_id] == "worker-1", (trial_id, node[trial_id])
    for trial_id in started:
        assert attempt[trial_id] >= 2, (trial_id, attempt[trial_id])
    assert {t for t, a in attempt.items() if a > 1} <= set(on_doomed)
    # Nothing ran on worker-0 after it died (a result already on its way may be recorded a
    # moment after the kill), and Ray knows it is dead.
    assert set(node.values()) <= {"worker-0", "worker-1"}
    on_dead = trials[[node[t] == "worker-0" for t in trials["trial_id"]]]
    assert (on_dead["finished_at"] < killed_at + pd.Timedelta(seconds=5)).all(), on_dead[["trial_id", "finished_at"]]
    assert not doomed.alive() and not lc.node_processes(doomed.pgid)
    alive = {r["node_id"] for r in cluster.gcs_nodes() if r["alive"]}
    assert doomed.node_id not in alive and len(alive) == 2
