"""How the gateway relays a stream, on the wire: the real gateway process in front of a scripted engine, a socket
server that writes its answer in the pieces and at the moments a test chooses (a real engine's timing is its own,
so it cannot show when each byte is written). The end-to-end streaming tests with llama.cpp are in test_gateway.py."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.gateway.routes import Backend, Route, RouteState, RouteTable
from reconciler.gateway.routes_file import write_routes
from tests.conftest import wait_for
from tests.test_engines import free_port

GATEWAY = Path(__file__).resolve().parent.parent / "reconciler" / "gateway" / "__main__.py"
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"
_TCPI_DATA_SEGS_IN = 152  # struct tcp_info (linux/tcp.h): segments that carried data, received (Linux 4.6+)


def event(data: str) -> bytes:
    """One server-sent event as one HTTP chunk."""
    text = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(text), text)


@dataclass
class ScriptedEngine:
    """Answers each request with `writes`: each piece sent once its gate (if any) is set."""

    port: int
    writes: list[tuple[bytes, threading.Event | None]] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)  # as they came, head and body

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                received = b""
                while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                else:
                    self.requests.append(received)
                    self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        for piece, gate in self.writes:
            if gate is not None:
                gate.wait(30)
            connection.sendall(piece)


def _length(request: bytes) -> int:
    head = request.partition(b"\r\n\r\n")[0].decode().lower()
    return next(int(line.split(":")[1]) for line in head.splitlines() if line.startswith("content-length:"))


@pytest.fixture
def engine_and_gateway(tmp_path: Path) -> Iterator[tuple[ScriptedEngine, int]]:
    yield from _engine_and_gateway(tmp_path, "127.0.0.1")


@pytest.fixture
def engine_by_name_and_gateway(tmp_path: Path) -> Iterator[tuple[ScriptedEngine, int]]:
    """The engine's URL names a host, as a hosted provider's does (aiohttp keeps no cookies of a bare address)."""
    yield from _engine_and_gateway(tmp_path, "localhost")


def _engine_and_gateway(tmp_path: Path, host: str) -> Iterator[tuple[ScriptedEngine, int]]:
    listener = socket.create_server(("127.0.0.1", 0))
    engine = ScriptedEngine(listener.getsockname()[1])
    threading.Thread(target=engine.serve, args=(listener,), daemon=True).start()
    routes = tmp_path / "state" / "gateway" / "routes.json"
    routes.parent.parent.mkdir()
    write_routes(routes, RouteTable(models={"tiny": Route(state=RouteState.ready, backends=(
        Backend(workload="engine", url=f"http://{host}:{engine.port}/v1"),))}))
    port = free_port()
    gateway = subprocess.Popen([sys.executable, "-P", str(GATEWAY), "--port", str(port), "--routes", str(routes)])
    try:
        wait_for(lambda: _answers(port), timeout=30, what="the gateway to listen")
        yield engine, port
    finally:
        gateway.kill()
        gateway.wait()
        listener.close()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _ask(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = b'{"model": "tiny", "prompt": "the", "stream": true}'
    client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return client


def _read_until(client: socket.socket, wanted: bytes, received: bytes = b"") -> bytes:
    while wanted not in received:
        chunk = client.recv(65536)
        assert chunk, f"the answer ended before {wanted!r}: {received!r}"
        received += chunk
    return received


def _data_segments(client: socket.socket) -> int:
    """Segments with data the client's socket has received: each write of the gateway's is one (it is far below
    loopback's segment size, and the gateway sends with TCP_NODELAY, as aiohttp does)."""
    return struct.unpack_from("I", client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), _TCPI_DATA_SEGS_IN)[0]


def test_what_the_engine_sent_together_reaches_the_client_in_one_segment(engine_and_gateway) -> None:
    """Headers, events and the end that the engine wrote at once leave the gateway in one write: the client is woken
    once for its first token, not first for the headers alone (and again for the end)."""
    engine, port = engine_and_gateway
    engine.writes = [(HEADERS + event('{"n": 1}') + event("[DONE]") + END, None)]
    with _ask(port) as client:
        received = _read_until(client, b"[DONE]")
        while chunk := client.recv(65536):
            received += chunk
        segments = _data_segments(client)
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(END), received
    assert segments == 1, f"the answer came in {segments} segments"


def test_the_headers_wait_for_the_first_event_and_no_event_waits_for_the_next(engine_and_gateway) -> None:
    """An engine that answers with its headers and thinks before its first token: the client gets the headers with
    that token, in one segment, and each event as soon as the engine sends it (the next is held back here until the
    client has the one before: a gateway that waited for more would time the test out)."""
    engine, port = engine_and_gateway
    first_event, the_rest = threading.Event(), threading.Event()
    engine.writes = [(HEADERS, None), (event('{"n": 1}'), first_event), (event("[DONE]") + END, the_rest)]
    with _ask(port) as client:
        time.sleep(0.3)  # the engine's headers reach the gateway alone: a gateway that sent them on has done so
        first_event.set()
        received = _read_until(client, b'data: {"n": 1}')
        segments = _data_segments(client)
        assert received.startswith(b"HTTP/1.1 200 OK") and segments == 1, (segments, received)
        the_rest.set()
        _read_until(client, event("[DONE]") + END, received)


def test_what_one_answer_sets_is_not_sent_with_the_next_request(engine_by_name_and_gateway) -> None:
    """The gateway's client keeps no cookies: one client's answer (a provider's session cookie, say) never rides
    along with another client's request."""
    engine, port = engine_by_name_and_gateway
    engine.writes = [(HEADERS.replace(b"\r\n\r\n", b"\r\nSet-Cookie: session=first-client; Path=/\r\n\r\n")
                      + event("[DONE]") + END, None)]
    for _ in range(2):
        with _ask(port) as client:
            _read_until(client, event("[DONE]") + END)
    assert len(engine.requests) == 2 and b"first-client" not in engine.requests[1], engine.requests[1]
