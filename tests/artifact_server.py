"""A loopback HTTP file server for artifact tests, with knobs for the ways real servers fail.

Per file: `ranges=False` ignores Range (answers 200 with everything), `cut_after=N` promises the whole
body but hangs up after N bytes (once, so a retry can resume), `corrupt=True` serves other bytes of the
same length, `status=404` fails the request, `delay=s` waits before the body, `location=URL` redirects there.
Every request is recorded.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# This server listens on loopback, which models may be fetched from only where a Policy lists it: appended to a
# Policy's YAML, under its spec.
LOOPBACK_SOURCES = "  models:\n    internalNetworks: [127.0.0.0/8]\n"


@dataclass
class Served:
    data: bytes
    ranges: bool = True
    cut_after: int | None = None
    corrupt: bool = False
    status: int | None = None
    delay: float = 0.0
    location: str | None = None


@dataclass(frozen=True)
class Seen:
    path: str
    range: str | None


class ArtifactServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, name: str, data: bytes, **knobs: object) -> str:
        self.files[name] = Served(data, **knobs)  # type: ignore[arg-type]
        return self.url(name)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return self._server.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def gets(self, name: str) -> list[Seen]:
        with self._lock:
            return [each for each in self.seen if each.path == f"/{name}"]

    def start(self) -> ArtifactServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # a short poll interval: stop() waits for one
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._thread = None

    def _record(self, path: str, range_header: str | None) -> None:
        with self._lock:
            self.seen.append(Seen(path, range_header))


def _handler(owner: ArtifactServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            owner._record(self.path, self.headers.get("Range"))
            served = owner.files.get(self.path.lstrip("/"))
            if served is not None and served.location is not None:
                self.send_response(302)
                self.send_header("Location", served.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if served is None or served.status is not None:
                self.send_error(served.status if served else 404)
                return
            body = bytes(b ^ 0xFF for b in served.data) if served.corrupt else served.data
            start = _range_start(self.headers.get("Range")) if served.ranges else None
            if start is not None and start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200 if start is None else 206)
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            part = body[start or 0:]
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            time.sleep(served.delay)
            if served.cut_after is not None:
                part, served.cut_after = part[:served.cut_after], None
                self.close_connection = True
            self.wfile.write(part)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    return Handler


def _range_start(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match[1]) if match else None
