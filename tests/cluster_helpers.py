"""What the process and cluster tests read off the machine, from /proc: the processes below a
driver, TCP and UDP sockets and which of them a process holds, and how many intervals overlap at
most."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]

LISTEN, ESTABLISHED = "0A", "01"  # /proc/net/tcp state codes


class TcpSocket(NamedTuple):
    state: str  # LISTEN, ESTABLISHED, ...
    local_ip: str
    local_port: int
    remote_port: int


def tcp_sockets() -> dict[int, TcpSocket]:
    """socket inode -> its state and ends, for every IPv4 and IPv6 TCP socket on the machine."""
    out = {}
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            hexip, hexport = f[1].split(":")
            raw = bytes.fromhex(hexip)
            if v6:  # four little-endian 32-bit words
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            out[int(f[9])] = TcpSocket(f[3], ip, int(hexport, 16), int(f[2].rsplit(":", 1)[1], 16))
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds open (empty if it is gone or not ours to read)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except (FileNotFoundError, PermissionError):
        pass
    return inodes


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most of the (start, end) intervals open at one instant; an end at the same instant as a
    start counts first, so back-to-back intervals do not overlap."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


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
