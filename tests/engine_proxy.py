"""A counting proxy on the Docker socket: it counts the API requests that pass through it by method and path (ids,
names and the API version folded, query dropped). The bench points both tools at it (engine calls per scenario are
the stable figure on a noisy machine); a test points the reconciler at it.

It reads only the request side of each connection (request line, headers, Content-Length body) and forwards
every byte unchanged both ways; a connection that upgrades (attach, exec start) is forwarded uncounted from then on.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections import Counter
from pathlib import Path

_VERSION = re.compile(r"^/v\d+\.\d+")
_NAMED = re.compile(r"^/(containers|images|networks|volumes|exec|plugins)/(?!json$|create$|prune$)[^/]+")


def endpoint(method: str, target: str) -> str:
    """'GET /v1.41/containers/abc/json?size=0' -> 'GET /containers/{}/json'."""
    path = _VERSION.sub("", target.split("?", 1)[0])
    if path.startswith("/images/"):  # an image name may hold slashes: everything up to the last verb is the name
        head, _, verb = path.rpartition("/")
        path = "/images/{}" + (f"/{verb}" if head != "/images" and verb in ("json", "push", "tag", "history") else "")
    else:
        path = _NAMED.sub(lambda match: f"/{match.group(1)}/{{}}", path)
    return f"{method} {path}"


class CountingProxy:
    """Listens on `path`, forwards to the engine at `upstream` (a unix socket path); `counts` per endpoint. `cut`:
    endpoints whose requests never reach the engine: the connection is dropped, as an engine that dies would."""

    def __init__(self, path: Path, upstream: str, cut: frozenset[str] = frozenset()) -> None:
        self.path, self.upstream, self.cut = path, upstream, cut
        self.counts: Counter[str] = Counter()
        self.connections = 0  # accepted so far
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._server.listen(64)
        threading.Thread(target=self._accept, name="engine-proxy", daemon=True).start()

    def reset(self) -> Counter[str]:
        """The counts so far, and start again from zero."""
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(self.upstream)
            threading.Thread(target=self._requests, args=(client, engine), daemon=True).start()
            threading.Thread(target=_pipe, args=(engine, client), daemon=True).start()

    def _requests(self, client: socket.socket, engine: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {name.strip().lower(): value.strip()
                           for name, _, value in (line.partition(":") for line in lines[1:])}
                with self._lock:
                    self.counts[endpoint(method, target)] += 1
                if endpoint(method, target) in self.cut:
                    _close(client, socket.SHUT_RDWR)
                    return
                engine.sendall(head + b"\r\n\r\n")
                if headers.get("transfer-encoding", "").lower() == "chunked" or "upgrade" in headers:
                    engine.sendall(buffer)
                    _pipe(client, engine)  # a stream from here on: forwarded, not parsed
                    return
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                engine.sendall(buffer[:length])
                buffer = buffer[length:]
        except OSError:
            return
        finally:
            _close(engine, socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()
        self.path.unlink(missing_ok=True)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        _close(target, socket.SHUT_WR)


def _close(connection: socket.socket, how: int) -> None:
    try:
        connection.shutdown(how)
    except OSError:
        pass
