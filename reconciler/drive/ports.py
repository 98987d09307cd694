"""Whether a host port is free for a new listener."""

from __future__ import annotations

import socket


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket's TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
