"""A real multi-node Ray cluster on one machine, on loopback only, with token auth on.

A head node and N worker nodes, each started by its own ``ray start`` and so each with its own
raylet, object store and worker pool. Worker nodes may declare GPUs the machine does not have
(``--gpus-per-node 1``) so that GPU placement (fractional GPUs, packing, CUDA_VISIBLE_DEVICES)
can be exercised on a CPU-only machine. ``kill-worker`` SIGKILLs one worker node to simulate the
loss of a machine in the middle of a sweep.

Command line (run it with the project's Python, e.g. ``.venv/bin/python``)::

    python -m telescope.run.local_cluster start --workers 2 --cpus-per-node 1 --gpus-per-node 1
    source /tmp/telescope-cluster/env.sh          # RAY_ADDRESS, token, loopback settings
    telescope run sweeps/demo.toml --out runs/demo --address "$RAY_ADDRESS"
    python -m telescope.run.local_cluster status
    python -m telescope.run.local_cluster kill-worker 0
    python -m telescope.run.local_cluster stop

Python API::

    with LocalCluster(workers=2, cpus_per_node=1, gpus_per_node=1) as cluster:
        address = cluster.address            # "127.0.0.1:PORT"
        env = cluster.driver_env()           # what a driver process needs in its environment
        cluster.kill_worker(0)

Linux only (it reads /proc), as are multi-node Ray clusters. Three things about Ray 2.60 that
this module exists to get right:

* Token authentication. ``ray.init()`` with no address turns token auth on by default, but
  ``ray start`` only turns it on when ``RAY_AUTH_MODE=token`` is set or a token already exists,
  and a driver that connects with an explicit address never turns it on by itself. So every
  node here is started with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` pointing to a
  fresh 256-bit token in the cluster directory (mode 0600), and a driver must carry the same two
  variables (``driver_env()`` / ``env.sh``). A driver without the token is refused.
* Loopback. Ray's servers (GCS, raylet, agents) bind to 127.0.0.1 only when the node's IP is
  exactly "127.0.0.1"; otherwise they bind every interface. But ``ray start`` and ``ray.init``
  rewrite "127.0.0.1" (in ``--node-ip-address`` and in ``--address``) to the machine's outward
  IP. The nodes are therefore started through a small shim around the ``ray start`` command
  line that keeps "127.0.0.1" as given, and a driver process gets
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which makes Ray's own IP lookup in that process answer
  127.0.0.1 (nothing else reads it in a driver).
* ``ray stop`` stops every Ray process of the user on the machine, including other people's
  clusters. Nothing here calls it: each node runs in its own process group, and ``stop`` signals
  exactly those groups.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
DEFAULT_DIR = Path(os.environ.get("TELESCOPE_CLUSTER_DIR", "/tmp/telescope-cluster"))
STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
ENV_FILE = "env.sh"

# `ray start`, except that a loopback address stays 127.0.0.1 instead of being rewritten to the
# machine's outward IP (Ray's servers bind 127.0.0.1 only when the node IP is exactly that).
_RAY_START_SHIM = (
    "import sys\n"
    "import ray._private.services as services\n"
    "_resolve = services.resolve_ip_for_localhost\n"
    "services.resolve_ip_for_localhost = lambda host: host if host == '127.0.0.1' else _resolve(host)\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv[0] = 'ray'\n"
    "sys.exit(main())\n"
)

# Reads the node table from the GCS (no driver, no job): used by `status` and `wait_for_nodes`.
_NODES_PROBE = (
    "import json, sys\n"
    "from ray._raylet import GcsClient\n"
    "from ray.core.generated.gcs_pb2 import GcsNodeInfo\n"
    "client = GcsClient(address=sys.argv[1])\n"
    "rows = []\n"
    "for node_id, info in client.get_all_node_info(timeout=10).items():\n"
    "    rows.append({'node_id': node_id.hex(), 'alive': info.state == GcsNodeInfo.ALIVE,\n"
    "                 'is_head': info.is_head_node, 'address': info.node_manager_address,\n"
    "                 'port': info.node_manager_port,\n"
    "                 'resources': dict(info.resources_total)})\n"
    "print(json.dumps(rows))\n"
)


class ClusterError(RuntimeError):
    """The local cluster could not be started, found or stopped."""


# --------------------------------------------------------------------------- processes (/proc)


def _proc_stat(pid: int) -> tuple[str, str, int, int, int] | None:
    """(comm, state, ppid, pgid, start time) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # pid (comm) state ppid pgrp ... starttime (field 22); comm may contain spaces and parens.
    lpar, rpar = raw.index("("), raw.rindex(")")
    comm = raw[lpar + 1 : rpar]
    rest = raw[rpar + 2 :].split()
    return comm, rest[0], int(rest[1]), int(rest[2]), int(rest[19])


def cmdline(pid: int) -> list[str]:
    """A process's argv from /proc ([] once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def live_table() -> dict[int, tuple[str, str, int, int, int]]:
    """All live (non-zombie) processes: pid -> (comm, state, ppid, pgid, start time)."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _proc_stat(int(d))
            if st is not None and st[1] not in ("Z", "X"):
                table[int(d)] = st
    return table


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie.

    (In containers whose PID 1 does not reap orphans, killed daemons stay as zombies forever.)
    """
    st = _proc_stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def _identity(pid: int) -> tuple[int, int] | None:
    """(pid, start time) of a live process: unlike a bare pid, it cannot be reused."""
    st = _proc_stat(pid)
    return None if st is None or st[1] in ("Z", "X") else (pid, st[4])


def node_processes(pgid: int) -> set[int]:
    """Live processes of one node: its process group and all their descendants.

    (The raylet puts each task worker in a process group of its own, so the group alone
    misses them.)
    """
    table = live_table()
    members = {pid for pid, st in table.items() if st[3] == pgid}
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st[2], []).append(pid)
    stack = list(members)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in members:
                members.add(child)
                stack.append(child)
    return members


def raylets_under(directory: Path | str) -> list[int]:
    """Live raylet processes whose command line mentions `directory` (their session dir)."""
    directory = str(directory)
    return [
        pid
        for pid, st in live_table().items()
        if st[0] == "raylet" and any(directory in arg for arg in cmdline(pid))
    ]


def _kill(pids: set[int] | list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_identities(idents: set[tuple[int, int]], sig: int) -> set[tuple[int, int]]:
    """Signal the processes that are still exactly these (pid, start time); returns those."""
    alive = {i for i in idents if _identity(i[0]) == i}
    _kill([pid for pid, _ in alive], sig)
    return alive


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    """One `ray start`: its role, its process group and its raylet."""

    name: str  # "head", "worker-0", ...
    pgid: int  # process group of everything that node started
    raylet_pid: int
    node_id: str  # hex, as in ray.nodes()["NodeID"]
    num_cpus: float
    num_gpus: float
    killed: bool = False

    def alive(self) -> bool:
        """Its raylet is running (the same process: same name and process group)."""
        st = _proc_stat(self.raylet_pid) if self.raylet_pid > 0 else None
        return st is not None and st[1] not in ("Z", "X") and st[0] == "raylet" and st[3] == self.pgid


@dataclass
class LocalCluster:
    """Head + `workers` worker nodes on 127.0.0.1. See the module docstring."""

    workers: int = 2
    cpus_per_node: float = 1
    gpus_per_node: float = 0
    head_cpus: float | None = None  # default: cpus_per_node
    head_gpus: float = 0
    port: int | None = None  # GCS port; default: a free one
    resources_per_worker: dict[str, float] | None = None  # extra custom resources
    object_store_mb: int = 128  # per node; Ray's default (30% of RAM per node) is far too much here
    dashboard: bool = False  # the dashboard (and so `ray job submit`) on 127.0.0.1 only
    dashboard_port: int | None = None
    system_config: dict[str, Any] | None = None  # Ray _system_config, e.g. faster health checks
    directory: Path | str | None = None  # default: a fresh directory under /tmp
    workdir: Path | str | None = None  # nodes' working directory; default: the current one
    python: str = sys.executable
    start_timeout_s: float = 60.0
    start_attempts: int = 2

    address: str | None = field(default=None, init=False)
    nodes: list[Node] = field(default_factory=list, init=False)
    token_path: Path | None = field(default=None, init=False)
    dashboard_url: str | None = field(default=None, init=False)
    _owns_dir: bool = field(default=False, init=False)

    # ------------------------------------------------------------ lifecycle

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ClusterError("workers must be >= 0")
        if self.directory is None:
            # Short paths: Ray puts unix sockets under it (sun_path is 107 bytes).
            self.directory = Path(tempfile.mkdtemp(prefix="tlc-", dir="/tmp"))
            self._owns_dir = True
        self.directory = Path(self.directory)
        # Trials resolve a spec's relative paths (data = "data/train.bin") against this, as
        # they would in a local `telescope run` started here.
        self.workdir = Path(self.workdir or os.getcwd())

    def __enter__(self) -> "LocalCluster":
        if self.address is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ray_temp_dir(self) -> Path:
        return Path(self.directory) / "ray"

    @property
    def state_path(self) -> Path:
        return Path(self.directory) / STATE_FILE

    def start(self) -> str:
        """Start the head, then each worker; wait until the GCS lists them all alive."""
        if self.address is not None:
            raise ClusterError("this cluster is already started")
        d = Path(self.directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "logs").mkdir(exist_ok=True)
        if self.state_path.exists():
            old = json.loads(self.state_path.read_text())
            if any(Node(**n).alive() for n in old.get("nodes", [])):
                raise ClusterError(f"a cluster from {d} is still running; stop it first")
        self.token_path = d / TOKEN_FILE
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        port = self.port or free_port()
        self.address = f"{LOOPBACK}:{port}"
        try:
            self._start_node(
                "head",
                [
                    "--head",
                    f"--port={port}",
                    f"--temp-dir={self.ray_temp_dir}",
                    *self._dashboard_args(),
                    *(
                        [f"--system-config={json.dumps(self.system_config)}"]
                        if self.system_config
                        else []
                    ),
                ],
                num_cpus=self.cpus_per_node if self.head_cpus is None else self.head_cpus,
                num_gpus=self.head_gpus,
                resources=None,
            )
            for i in range(self.workers):
                self._start_node(
                    f"worker-{i}",
                    [f"--address={self.address}"],
                    num_cpus=self.cpus_per_node,
                    num_gpus=self.gpus_per_node,
                    resources=self.resources_per_worker,
                )
            self.wait_for_nodes(1 + self.workers)
        except BaseException:
            self.stop(remove_dir=False)
            raise
        self._write_state()
        return self.address

    def _dashboard_args(self) -> list[str]:
        if not self.dashboard:
            return ["--include-dashboard=false"]
        port = self.dashboard_port or free_port()
        self.dashboard_url = f"http://{LOOPBACK}:{port}"
        return [
            "--include-dashboard=true",
            f"--dashboard-host={LOOPBACK}",
            f"--dashboard-port={port}",
        ]

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
            env.pop(var, None)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_USAGE_STATS_ENABLED="0",
        )
        return env

    def _start_node(
        self,
        name: str,
        role_args: list[str],
        num_cpus: float,
        num_gpus: float,
        resources: dict[str, float] | None,
    ) -> Node:
        """`ray start` one node, retrying a failed start.

        On a loaded machine a raylet can die at start: it waits a fixed ~15 s for its Python
        dashboard agent to report a port, and the agent's imports can take longer than that
        (`RAY_agent_register_timeout_ms` does not govern this wait in Ray 2.60).
        """
        for attempt in range(1, self.start_attempts + 1):
            try:
                return self._start_node_once(name, role_args, num_cpus, num_gpus, resources, attempt)
            except ClusterError:
                if attempt == self.start_attempts:
                    raise
                failed = self.nodes.pop()  # retry from nothing: no process of it may linger
                _kill(node_processes(failed.pgid), signal.SIGKILL)
                deadline = time.monotonic() + 5
                while node_processes(failed.pgid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        raise AssertionError("unreachable")

    def _start_node_once(
        self,
        name: str,
        role_args: list[str],
        num_cpus: float,
        num_gpus: float,
        resources: dict[str, float] | None,
        attempt: int,
    ) -> Node:
        # Every node of this machine needs its own ports for the per-node agents; the rest are
        # chosen by the OS (0). --node-ip-address keeps all servers on loopback (see the shim).
        args = [
            "start",
            *role_args,
            f"--node-ip-address={LOOPBACK}",
            f"--num-cpus={_int_if_whole(num_cpus)}",
            f"--num-gpus={_int_if_whole(num_gpus)}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            "--node-manager-port=0",
            "--object-manager-port=0",
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
            "--log-style=record",
            "--log-color=false",
        ]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        suffix = "" if attempt == 1 else f".{attempt}"
        log_path = Path(self.directory) / "logs" / f"{name}.start{suffix}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [self.python, "-c", _RAY_START_SHIM, *args],
                env=self._base_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # this node's daemons share this process group
                cwd=self.workdir,  # Ray's worker processes (the trials) start in this directory
            )
            pgid = proc.pid
            try:
                rc = proc.wait(timeout=self.start_timeout_s)
            except subprocess.TimeoutExpired:
                _kill(node_processes(pgid), signal.SIGKILL)
                proc.wait()
                rc = None
        # Record the group before judging success, so that a failed start is still cleaned up.
        node = Node(name, pgid, -1, "", float(num_cpus), float(num_gpus))
        self.nodes.append(node)
        if rc != 0:
            tail = log_path.read_text()[-3000:]
            raise ClusterError(f"`ray start` for {name} failed (rc={rc}); log {log_path}:\n{tail}")
        node.raylet_pid, node.node_id = self._find_raylet(pgid)
        return node

    def _find_raylet(self, pgid: int) -> tuple[int, str]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for pid, st in live_table().items():
                if st[3] == pgid and st[0] == "raylet":
                    for arg in cmdline(pid):
                        if arg.startswith("--node_id="):
                            return pid, arg.split("=", 1)[1]
            time.sleep(0.1)
        raise ClusterError(f"no live raylet in process group {pgid} after `ray start`")

    def wait_for_nodes(self, count: int, timeout_s: float = 30.0) -> list[dict]:
        """Wait until the GCS lists `count` alive nodes; returns the node table."""
        deadline = time.monotonic() + timeout_s
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.gcs_nodes()
            if sum(r["alive"] for r in rows) >= count:
                return rows
            time.sleep(0.5)
        raise ClusterError(f"expected {count} alive nodes, GCS lists {rows}")

    def gcs_nodes(self) -> list[dict]:
        """The GCS's node table (node_id, alive, is_head, resources), read in a subprocess."""
        if self.address is None:
            raise ClusterError("not started")
        out = subprocess.run(
            [self.python, "-c", _NODES_PROBE, self.address],
            env={**self._base_env(), **self.driver_env()},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise ClusterError(f"could not read the node table: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def worker(self, i: int) -> Node:
        name = f"worker-{i}"
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no {name} (this cluster has {self.workers} workers)")

    def kill_worker(self, i: int, whole_node: bool = True) -> Node:
        """SIGKILL worker `i`'s raylet, as if its machine died.

        With whole_node (the default) the rest of that node's processes (its task workers,
        agents, log monitor) are SIGKILLed right after, as losing the machine would; otherwise
        they notice the dead raylet and exit on their own.
        """
        node = self.worker(i)
        # Everything of the node, taken before the raylet dies and its children are orphaned.
        rest = {i for i in map(_identity, node_processes(node.pgid)) if i is not None}
        if node.alive():
            os.kill(node.raylet_pid, signal.SIGKILL)
        if whole_node:
            _kill_identities(rest, signal.SIGKILL)
        node.killed = True
        self._write_state()
        return node

    def stop(self, timeout_s: float = 5.0, remove_dir: bool | None = None) -> None:
        """Stop every process of this cluster, and only those (never `ray stop`, which would
        stop every Ray cluster of the user on this machine).

        In `ray stop`'s order, each step waiting up to `timeout_s`: SIGTERM the raylets
        (workers first; each takes its agents and task workers along), then the other daemons
        (autoscaler monitor, log monitors, dashboard), then the GCS last — signalled together,
        the monitor hangs on the dying GCS —, then SIGKILL whatever is left. Removes the cluster
        directory if this object created it (or remove_dir).
        """

        def current() -> set[tuple[int, int]]:
            pids = {pid for n in self.nodes for pid in node_processes(n.pgid)}
            return {i for i in map(_identity, pids) if i is not None}

        def wait_for(idents: set[tuple[int, int]]) -> set[tuple[int, int]]:
            deadline = time.monotonic() + timeout_s
            left = _kill_identities(idents, 0)  # signal 0 only asks whether it still exists
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = _kill_identities(left, 0)
            return left

        # A node's processes are its process group plus their descendants (task workers have
        # groups of their own); once a raylet exits its orphans leave that tree, so every
        # process seen is remembered by (pid, start time), which a reused pid cannot match.
        seen = current()
        raylets = {i for n in reversed(self.nodes) if n.alive() and (i := _identity(n.raylet_pid))}
        wait_for(_kill_identities(raylets, signal.SIGTERM))
        seen |= current()
        gcs = {i for i in seen if (st := _proc_stat(i[0])) and st[0] == "gcs_server"}
        wait_for(_kill_identities(seen - gcs, signal.SIGTERM))
        wait_for(_kill_identities(gcs, signal.SIGTERM))
        deadline = time.monotonic() + 5
        left = _kill_identities(seen | current(), 0)
        while left and time.monotonic() < deadline:
            _kill_identities(left, signal.SIGKILL)
            time.sleep(0.1)
            left = _kill_identities(left | current(), 0)
        left_pids = sorted(pid for pid, _ in left)
        self.address = None
        if remove_dir if remove_dir is not None else self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
        elif self.state_path.exists():
            self.state_path.unlink()
        if left_pids:
            raise ClusterError(f"processes survived SIGKILL: {left_pids}")

    # ------------------------------------------------------------ for drivers and tools

    def driver_env(self) -> dict[str, str]:
        """Environment a driver process (telescope run/resume, ray.init) needs to connect."""
        if self.address is None or self.token_path is None:
            raise ClusterError("not started")
        return {
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            # Keeps Ray from rewriting 127.0.0.1 to this machine's outward IP in the driver.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

    def status(self) -> dict[str, Any]:
        nodes = []
        for n in self.nodes:
            nodes.append(
                {
                    "name": n.name,
                    "node_id": n.node_id,
                    "raylet_pid": n.raylet_pid,
                    "pgid": n.pgid,
                    "num_cpus": n.num_cpus,
                    "num_gpus": n.num_gpus,
                    "raylet_alive": n.alive(),
                    "processes": len(node_processes(n.pgid)),
                    "killed": n.killed,
                }
            )
        return {"address": self.address, "directory": str(self.directory), "nodes": nodes}

    def _write_state(self) -> None:
        state = {
            "address": self.address,
            "directory": str(self.directory),
            "token_path": str(self.token_path),
            "dashboard_url": self.dashboard_url,
            "python": self.python,
            "workdir": str(self.workdir),
            "workers": self.workers,
            "nodes": [n.__dict__ for n in self.nodes],
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)
        env_lines = [f"export {k}={v}" for k, v in self.driver_env().items()]
        (Path(self.directory) / ENV_FILE).write_text("\n".join(env_lines) + "\n")

    @classmethod
    def from_state(cls, directory: Path | str) -> "LocalCluster":
        """Re-attach to a cluster started earlier (by the CLI) from its state file."""
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise ClusterError(f"no cluster state in {directory} (is a cluster started there?)")
        state = json.loads(path.read_text())
        cluster = cls(workers=state["workers"], directory=directory, python=state["python"])
        cluster.address = state["address"]
        cluster.token_path = Path(state["token_path"])
        cluster.dashboard_url = state.get("dashboard_url")
        cluster.nodes = [Node(**n) for n in state["nodes"]]
        return cluster


def _int_if_whole(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="local_cluster.py",
        description="A multi-node Ray cluster on this machine (loopback only, token auth on).",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"cluster directory: state, token, logs (default {DEFAULT_DIR}, "
        "or $TELESCOPE_CLUSTER_DIR)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a head and N worker nodes; prints the address")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--cpus-per-node", type=float, default=1)
    s.add_argument("--gpus-per-node", type=float, default=0, help="may exceed the real GPUs")
    s.add_argument("--head-cpus", type=float, default=None)
    s.add_argument("--head-gpus", type=float, default=0)
    s.add_argument("--port", type=int, default=None, help="GCS port (default: a free one)")
    s.add_argument("--resources", type=json.loads, default=None,
                   help='extra per-worker resources, JSON, e.g. \'{"A10G": 1}\'')
    s.add_argument("--object-store-mb", type=int, default=128)
    s.add_argument("--dashboard", action="store_true",
                   help="start the dashboard and job API on 127.0.0.1 (for `ray job submit`; "
                   "needs ray[default], which telescope's own dependencies do not pull in)")
    s.add_argument("--dashboard-port", type=int, default=None)
    s.add_argument("--workdir", type=Path, default=None,
                   help="the nodes' working directory, where trials resolve relative paths "
                   "(default: the current directory)")
    sub.add_parser("status", help="nodes, pids, and what the GCS says")
    k = sub.add_parser("kill-worker", help="SIGKILL a worker node (simulated node loss)")
    k.add_argument("index", type=int)
    k.add_argument("--raylet-only", action="store_true",
                   help="kill only the raylet, let its other processes exit on their own")
    t = sub.add_parser("stop", help="stop every node of this cluster (and only those)")
    t.add_argument("--keep-dir", action="store_true", help="keep logs and state directory")
    sub.add_parser("env", help="print the shell exports a driver needs")
    a = p.parse_args(argv)

    try:
        if a.cmd == "start":
            cluster = LocalCluster(
                workers=a.workers,
                cpus_per_node=a.cpus_per_node,
                gpus_per_node=a.gpus_per_node,
                head_cpus=a.head_cpus,
                head_gpus=a.head_gpus,
                port=a.port,
                resources_per_worker=a.resources,
                object_store_mb=a.object_store_mb,
                dashboard=a.dashboard,
                dashboard_port=a.dashboard_port,
                workdir=a.workdir,
                directory=a.dir,
            )
            address = cluster.start()
            print(address)
            print(f"# {1 + a.workers} nodes up. For a driver in another shell:", file=sys.stderr)
            print(f"#   source {Path(a.dir) / ENV_FILE}", file=sys.stderr)
            print(f"#   telescope run sweeps/demo.toml --out runs/demo --address {address}",
                  file=sys.stderr)
            if cluster.dashboard_url:
                print(f"#   dashboard / job API: {cluster.dashboard_url}", file=sys.stderr)
            print(f"# stop with: {sys.argv[0]} --dir {a.dir} stop", file=sys.stderr)
            return 0
        cluster = LocalCluster.from_state(a.dir)
        if a.cmd == "status":
            st = cluster.status()
            try:
                st["gcs"] = cluster.gcs_nodes()
            except (ClusterError, subprocess.TimeoutExpired) as e:
                st["gcs_error"] = str(e)
            print(json.dumps(st, indent=2))
        elif a.cmd == "kill-worker":
            node = cluster.kill_worker(a.index, whole_node=not a.raylet_only)
            print(f"killed {node.name} (raylet pid {node.raylet_pid}, node {node.node_id})")
        elif a.cmd == "stop":
            cluster.stop(remove_dir=not a.keep_dir)
            print("stopped")
        elif a.cmd == "env":
            print((Path(a.dir) / ENV_FILE).read_text(), end="")
        return 0
    except ClusterError as e:
        print(f"local_cluster: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
