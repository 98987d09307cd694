"""A port for a server that stops and starts again on it: one the kernel never hands out on its own.

A port from bind(("127.0.0.1", 0)) is in the ephemeral range, where the kernel also picks the source port of every
outgoing connection and every other bind to port 0 on the host. While a server that owns such a port is stopped
(an on-demand model idle or evicted), any client connection's source port (the gateway's, a test's, another
helper's on the same host) or another test's free port may take it, and the next start fails PortInUse."""

from __future__ import annotations

import random
import socket
from pathlib import Path

RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000  # above the well-known and most registered services' ports


def ephemeral_range() -> tuple[int, int]:
    low, high = RANGE.read_text().split()
    return int(low), int(high)


def stable_port() -> int:
    """A free loopback port below the ephemeral range (so only a bind that names it can take it)."""
    low, _ = ephemeral_range()
    for port in random.sample(range(LOWEST, low), 200):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LOWEST}..{low - 1}")
