"""The port helper for servers that stop and start again (tests/ports.py)."""

from __future__ import annotations

import errno
import socket

import pytest

from tests.ports import ephemeral_range, stable_port


def test_a_client_connections_source_port_keeps_a_server_from_listening_there() -> None:
    """Why ports from the ephemeral range are unsafe for a server that restarts: any connection may hold one."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client, socket.socket() as restarted:
            held = client.getsockname()[1]
            restarted.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as refused:
                restarted.bind(("127.0.0.1", held))
            assert refused.value.errno == errno.EADDRINUSE
    low, high = ephemeral_range()
    assert low <= held <= high


def test_a_stable_port_is_free_and_outside_the_ephemeral_range() -> None:
    port = stable_port()
    low, _ = ephemeral_range()
    assert port < low
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
