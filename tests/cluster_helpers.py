"""What the cluster tests read off the machine: TCP sockets from /proc, which sockets a process holds, and how many intervals overlap at most."""

from __future__ import annotations

import os
import socket
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
