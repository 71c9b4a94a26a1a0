"""Ports for the servers the tests start, taken below the kernel's ephemeral port range.

A port from that range (what binding port 0 hands out) is free when picked, but until the
server binds it any outgoing connection on the machine may take it as its source port, and
then the server cannot start (seen in CI: Temporal's metrics port, TEMPORAL_PORT + 2000,
held by a client connection). Below the range only listeners take ports, and every port
handed out here is remembered, so one test session never hands out the same port twice.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from pathlib import Path

_FIRST = 10000
_taken: set[int] = set()
_rng = random.Random()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_block(offsets: Sequence[int]) -> int:
    """A base port such that base + offset is free for every offset (and not handed out)."""
    last = _ephemeral_start() - max(offsets) - 1
    for _ in range(500):
        base = _rng.randrange(_FIRST, last)
        wanted = [base + offset for offset in offsets]
        if not _taken.intersection(wanted) and all(_free(p) for p in wanted):
            _taken.update(wanted)
            return base
    raise RuntimeError(f"no free ports below {last + max(offsets)}")


def free_ports(count: int) -> list[int]:
    base = port_block(range(count))
    return [base + i for i in range(count)]


def free_port() -> int:
    return port_block([0])
