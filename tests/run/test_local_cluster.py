"""A real multi-node Ray cluster on this machine: a head and two worker nodes, each its own raylet.

Drivers run in subprocesses with exactly the environment `LocalCluster.driver_env()` hands out,
as `telescope run --address` would. Select with `-m cluster`; about 30-60 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cluster_helpers import LISTEN, max_overlap, socket_inodes, tcp_sockets
from tests.sweep_helpers import wait_until
from telescope.run import local_cluster as lc

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="multi-node Ray: Linux only"),
]

ROOT = Path(__file__).resolve().parents[2]


# Faster node-death detection than Ray's default (~15 s), so the node-loss test stays short.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="module")
def cluster():
    c = lc.LocalCluster(
        workers=2,
        cpus_per_node=1,
        gpus_per_node=1,  # declared, not real: placement is what is tested
        head_cpus=1,
        system_config=FAST_HEALTH_CHECKS,
        workdir=ROOT,
        start_timeout_s=120,
    )
    try:
        c.start()
        yield c
    finally:
        c.stop()  # also removes the cluster's directory


def _env(cluster, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(cluster.driver_env())
    env.update(extra)
    return env


def _run_driver(cluster, tmp_path: Path, source: str, *args: str, **popen):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        **popen,
    )


def _result(proc: subprocess.Popen, timeout: float = 180) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"driver failed (rc={proc.returncode}):\n{out[-4000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------ loopback and token auth


def test_three_nodes_all_on_loopback(cluster):
    rows = cluster.gcs_nodes()
    alive = [r for r in rows if r["alive"]]
    assert len(alive) == 3
    assert sum(r["is_head"] for r in alive) == 1
    assert {r["node_id"] for r in alive} == {n.node_id for n in cluster.nodes}
    assert all(r["address"] == "127.0.0.1" for r in alive)
    assert sum(r["resources"].get("GPU", 0) for r in alive) == 2
    head = next(r for r in alive if r["is_head"])
    assert head["resources"].get("GPU", 0) == 0
    # Three raylets, three distinct node-manager ports, all alive.
    assert len({n.raylet_pid for n in cluster.nodes}) == 3
    assert len({r["port"] for r in alive}) == 3
    assert all(n["raylet_alive"] for n in cluster.status()["nodes"])

    # Every server this cluster runs listens on loopback only (none on 0.0.0.0 / ::).
    listening = {i: (s.local_ip, s.local_port) for i, s in tcp_sockets().items() if s.state == LISTEN}
    bound = []
    for node in cluster.nodes:
        for pid in lc.node_processes(node.pgid):
            bound += [listening[i] for i in socket_inodes(pid) if i in listening]
    assert bound, "found no listening sockets of the cluster's processes"
    gcs_port = int(cluster.address.rsplit(":", 1)[1])
    assert gcs_port in {port for _, port in bound}
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    assert {ip for ip, _ in bound} <= loopback, f"non-loopback listeners: {bound}"


def test_token_auth_is_required(cluster):
    probe = [sys.executable, "-c", lc._NODES_PROBE, cluster.address]
    no_token = _env(cluster)
    no_token.pop("RAY_AUTH_MODE")
    no_token.pop("RAY_AUTH_TOKEN_PATH")
    no_token["HOME"] = str(cluster.directory)  # and no ~/.ray/auth_token to fall back on
    wrong_token = _env(cluster, RAY_AUTH_TOKEN="0" * 64)  # RAY_AUTH_TOKEN wins over the path
    procs = [
        subprocess.Popen(probe, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for env in (no_token, wrong_token, _env(cluster))
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for out, p in zip(outs[:2], procs[:2]):
        assert p.returncode != 0 and "AuthenticationError" in out, out[-2000:]
    assert procs[2].returncode == 0, outs[2][-2000:]
    assert len(json.loads(outs[2].strip().splitlines()[-1])) == 3
    # The token is private to its owner.
    assert (cluster.token_path.stat().st_mode & 0o077) == 0


def test_cli_reads_the_running_cluster(cluster, capsys):
    assert lc.main(["--dir", str(cluster.directory), "env"]) == 0
    env_sh = capsys.readouterr().out
    assert f"export RAY_ADDRESS={cluster.address}" in env_sh
    assert "export RAY_AUTH_MODE=token" in env_sh
    assert lc.main(["--dir", str(cluster.directory), "status"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["address"] == cluster.address
    assert [n["name"] for n in st["nodes"]] == ["head", "worker-0", "worker-1"]
    assert sum(r["alive"] for r in st["gcs"]) == 3


# ------------------------------------------------------------------ GPU placement and packing

PACKING_DRIVER = """
    import json, os, time
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING", log_to_driver=False)
    head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self):
            self.n = 0
        def arrive(self):
            self.n += 1
        def count(self):
            return self.n

    barrier = Barrier.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()

    # Half a GPU each: two fit on a 1-GPU node. CPU 0 so that the GPU is the only limit.
    @ray.remote(num_gpus=0.5, num_cpus=0, max_retries=0)
    def trial(want):
        start = time.time()
        ray.get(barrier.arrive.remote())
        released = False
        deadline = time.time() + 60
        while time.time() < deadline:
            if ray.get(barrier.count.remote()) >= want:
                released = True
                break
            time.sleep(0.05)
        time.sleep(0.5)
        return {"node": ray.get_runtime_context().get_node_id(), "gpu_ids": ray.get_gpu_ids(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "cwd": os.getcwd(),
                "start": start, "end": time.time(), "released": released}

    # Four can run at once (2 nodes x 2 halves) and must, or the barrier never opens; the
    # fifth has to wait for a free half.
    rows = ray.get([trial.remote(4) for _ in range(5)])
    print("RESULT " + json.dumps(rows))
"""


def test_fractional_gpu_tasks_pack_two_per_gpu_node(cluster, tmp_path):
    rows = _result(_run_driver(cluster, tmp_path, PACKING_DRIVER))
    workers = {n.node_id for n in cluster.nodes if n.name.startswith("worker-")}
    head = next(n.node_id for n in cluster.nodes if n.name == "head")
    assert len(rows) == 5
    assert all(r["released"] for r in rows), "four half-GPU tasks never ran at the same time"
    assert {r["node"] for r in rows} == workers  # both GPU nodes used, never the head
    assert head not in {r["node"] for r in rows}
    for r in rows:
        assert r["cwd"] == str(ROOT)  # trials resolve relative spec paths in the repo
        assert r["gpu_ids"], r
        assert r["cuda_visible_devices"] == ",".join(str(g) for g in r["gpu_ids"])
    for node in workers:
        intervals = [(r["start"], r["end"]) for r in rows if r["node"] == node]
        assert max_overlap(intervals) <= 2, (node, intervals)
    assert max(max_overlap([(r["start"], r["end"]) for r in rows if r["node"] == n])
               for n in workers) == 2


# ------------------------------------------------------------------ a worker node dies mid-task

NODE_LOSS_DRIVER = """
    import json, os, pathlib, sys, time
    import ray

    marks = pathlib.Path(sys.argv[1])
    ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING", log_to_driver=False)

    @ray.remote(num_gpus=1, num_cpus=0, max_retries=2)
    def trial(marks):
        import pathlib, time
        marks = pathlib.Path(marks)
        attempt = len(list(marks.glob("attempt-*")))
        node = ray.get_runtime_context().get_node_id()
        (marks / f"attempt-{attempt}").write_text(node)
        if attempt == 0:
            time.sleep(600)  # the test kills this node meanwhile
        return {"attempt": attempt, "node": node}

    t0 = time.time()
    out = ray.get(trial.remote(str(marks)), timeout=240)
    out["seconds"] = time.time() - t0
    deadline = time.time() + 60
    while time.time() < deadline:
        nodes = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        if sum(nodes.values()) == 2:
            break
        time.sleep(0.5)
    out["alive"] = nodes
    print("RESULT " + json.dumps(out))
"""


def test_worker_node_loss_task_retried_on_survivor(cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = _run_driver(cluster, tmp_path, NODE_LOSS_DRIVER, str(marks))
    try:
        first = marks / "attempt-0"  # written by the task's first attempt: the node it runs on
        wait_until(proc, lambda: first.exists() and first.read_text() != "", "the task's start", timeout=120,
                   poll_s=0.2)
        doomed_id = first.read_text()
        doomed = next(n for n in cluster.nodes if n.node_id == doomed_id)
        assert doomed.name.startswith("worker-")
        cluster.kill_worker(int(doomed.name.split("-")[1]))
        result = _result(proc, timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    survivor = next(n for n in cluster.nodes if n.name.startswith("worker-") and n is not doomed)
    assert result["attempt"] >= 1 and result["node"] == survivor.node_id
    assert result["alive"][doomed.node_id] is False
    assert result["alive"][survivor.node_id] is True
    assert not doomed.alive()
    assert not lc.node_processes(doomed.pgid)  # the whole "machine" went
    assert survivor.alive() and cluster.nodes[0].alive()
    rows = cluster.gcs_nodes()
    assert {r["node_id"] for r in rows if r["alive"]} == {cluster.nodes[0].node_id, survivor.node_id}
    assert doomed.node_id in {r["node_id"] for r in rows if not r["alive"]}


# ------------------------------------------------------------------ stop


def test_stop_leaves_no_processes(cluster):
    directory = cluster.directory
    groups = [n.pgid for n in cluster.nodes]
    assert lc.raylets_under(directory)  # something to stop
    cluster.stop()
    assert lc.raylets_under(directory) == []
    assert all(not lc.node_processes(g) for g in groups)
    assert not Path(directory).exists()  # a cluster that made its directory removes it
    cluster.stop()  # idempotent: the fixture's teardown calls it again
