"""Multi-worker trials of the built-in GPT on a real multi-node Ray cluster on this machine: a head
with no CPU and two worker nodes of one CPU each, so a trial of 2 one-CPU workers spans both
worker nodes. `telescope run/resume --address` runs as a separate driver process.

Where the workers run is read two ways: from the ledger (`workers`, `nodes`) and from the process
table, where Ray titles a Ray Train worker process "ray::RayTrainWorker..." and its controller
"ray::TrainController...". Select with `-m cluster`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from telescope.run import local_cluster as lc
from telescope.spec.plan import plan
from telescope.spec.sweep import load_spec
from telescope.state import sweep_state
from telescope.store.ledger import Ledger
from tests.sweep_helpers import ROOT, only_lr_axis, raw_trials, running, stop_with, telescope_cmd, wait_until, write_spec

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="multi-node Ray: Linux only"),
]

TIMEOUT = 300  # generous wall-clock bounds: the machine's two cores are shared
TRAIN_TITLES = ("ray::RayTrainWorker", "ray::TrainController")


@pytest.fixture(scope="module")
def cluster():
    c = lc.LocalCluster(workers=2, cpus_per_node=1, head_cpus=0, workdir=ROOT, start_timeout_s=120)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def spec_with(tmp_path: Path, *, levels: int, workers: str, last_points: int = 1) -> Path:
    """The tests' tiny builtin spec over lr alone: 3 points at level 0, `last_points` later, one
    CPU per worker, no widening."""
    path = write_spec(tmp_path, calibration_width=16 << (levels - 1), steps=10, resources=f"workers = {workers}")
    text = path.read_text().replace("max_widenings = 1\n", "max_widenings = 0\nmax_shifts = 0\n")
    path.write_text(text.replace("min_points = 3\n", f"min_points = {last_points}\n"))
    return only_lr_axis(path, 3)


def driver_env(cluster) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **cluster.driver_env()}


def telescope_on(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(telescope_cmd(*args, "--address", cluster.address, "--quiet"), env=driver_env(cluster),
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


def train_processes(cluster, titles: tuple[str, ...] = TRAIN_TITLES) -> dict[str, set[int]]:
    """Node name -> pids of the Ray Train processes (of `titles`) running on it now."""
    return {node.name: {pid for pid in lc.node_processes(node.pgid) if (lc.cmdline(pid) or [""])[0].startswith(titles)}
            for node in cluster.nodes}


def workers_on(cluster) -> dict[str, int]:
    """Node name -> how many Ray Train worker processes run on it now."""
    return {name: len(pids) for name, pids in train_processes(cluster, ("ray::RayTrainWorker",)).items()}


def test_a_two_worker_trial_spans_two_nodes(cluster, tmp_path):
    """One trial of 2 one-CPU workers on nodes of one CPU each: its workers run on worker-0 and
    worker-1 at once (the process table), the ledger says 2 workers on 2 nodes, and nothing of
    Ray Train outlives the trial."""
    spec = only_lr_axis(spec_with(tmp_path, levels=1, workers="2"), 1)
    seen: list[dict[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(workers_on(cluster))
            stop.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = telescope_on(cluster, "run", str(spec), "--out", str(tmp_path / "out"))
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = Ledger(tmp_path / "out").trials().to_dict("records")
    assert row["status"] == "completed" and row["workers"] == 2 and row["nodes"] == 2 and row["attempt"] == 1
    assert row["node"].rsplit(" node ", 1)[1] in {n.node_id for n in cluster.nodes if n.name != "head"}
    assert {"head": 0, "worker-0": 1, "worker-1": 1} in seen, seen[-5:]  # one rank on each worker node
    deadline = time.monotonic() + 30
    while any(train_processes(cluster).values()):
        assert time.monotonic() < deadline, train_processes(cluster)
        time.sleep(0.2)


def test_controller_sigkilled_during_a_two_worker_level_then_resume(cluster, tmp_path):
    """SIGKILL `telescope run --address` while a level-1 trial trains on 2 workers: Ray ends the
    dead driver's trainer (no Ray Train process left on any node), and `telescope resume
    --address` finishes the sweep with one row per trial, level 1's on 2 workers and 2 nodes."""
    spec = spec_with(tmp_path, levels=2, workers="[1, 2]")
    out = tmp_path / "out"
    cmd = telescope_cmd("run", str(spec), "--out", str(out), "--address", cluster.address, "--quiet")
    with running(cmd, env=driver_env(cluster)) as proc:
        wait_until(proc, lambda: sum(workers_on(cluster).values()) == 2, "a two-worker trial running", TIMEOUT,
                   poll_s=0.2)
        stop_with(proc, signal.SIGKILL)  # the driver only, as a crash would
    before = raw_trials(out)
    assert before["level"].tolist() == [0, 0, 0], before[["level", "status"]]  # killed during level 1
    deadline = time.monotonic() + 60
    while any(train_processes(cluster).values()):
        assert time.monotonic() < deadline, f"Ray Train processes outlived their driver: {train_processes(cluster)}"
        time.sleep(0.2)

    result = telescope_on(cluster, "resume", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    trials = Ledger(out).trials()
    raw = raw_trials(out)
    assert len(raw) == len(trials) == raw["trial_id"].nunique() == plan(load_spec(spec)).trials == 4
    assert sweep_state(out)[2].complete and (trials["status"] == "completed").all()
    last = trials[trials["level"] == 1]
    assert (last["workers"] == 2).all() and (last["nodes"] == 2).all(), last[["workers", "nodes"]]
    kept = trials.set_index("trial_id").loc[before["trial_id"], "finished_at"]
    assert kept.tolist() == before["finished_at"].tolist()  # nothing recorded before the kill ran again


def test_a_node_that_dies_mid_trial_restarts_the_workers_on_the_survivor(cluster, tmp_path):
    """Last in this module, for it kills a node. A trial of 2 half-CPU workers (Ray Train packs
    both on one node) loses that whole node once they run: Ray Train starts the worker group again
    on the surviving node (max_retries 3), and the trial completes there. (`attempt` counts the
    groups that reached training: 1 or 2, as the kill lands before or after the first one did.)"""
    spec = only_lr_axis(write_spec(tmp_path, calibration_width=16, steps=300, resources="workers = 2"), 1)
    spec.write_text(spec.read_text().replace("num_cpus = 1\n", "num_cpus = 0.5\n")
                    .replace("max_widenings = 1\n", "max_widenings = 0\n").replace("min_points = 3\n", "min_points = 1\n"))
    out = tmp_path / "out"
    cmd = telescope_cmd("run", str(spec), "--out", str(out), "--address", cluster.address, "--quiet")
    with running(cmd, env=driver_env(cluster)) as proc:
        wait_until(proc, lambda: 2 in workers_on(cluster).values(), "both workers of the trial running", TIMEOUT,
                   poll_s=0.2)
        on = next(name for name, n in workers_on(cluster).items() if n == 2)
        index = [n.name for n in cluster.nodes if n.name != "head"].index(on)
        survivor = cluster.worker(1 - index)
        cluster.kill_worker(index)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr[-3000:]
    (row,) = Ledger(out).trials().to_dict("records")
    assert row["status"] == "completed" and row["attempt"] in (1, 2), (row["status"], row["error"])
    assert row["workers"] == 2 and row["nodes"] == 1
    assert row["node"].rsplit(" node ", 1)[1] == survivor.node_id  # restarted where its node was not
