"""The daemon answers read-only commands (status, describe, logs, validate) over a socket in its state directory, so
they answer without importing and computing what the daemon already has loaded, and runs the pass `apply` asks for.

Off the reconcile loop: one thread accepts, each request runs in a thread of its own, at most a few at once (more
are declined and the command computes its answer itself). A request is bounded in size and in the time it may take
to arrive. While an answer is computed the client is sent a blank line every KEEPALIVE_SECONDS: a pass may pull an
image for minutes, and the client tells that from a daemon that died (the socket closes) or hangs (silence). What a
request may run is the `answer` given (the command line's read-only commands, and apply's pass); the server only
carries bytes and captures what the command prints, so the answer is what the command prints without a daemon."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TextIO

from reconciler.base.private_socket import (MAX_REQUEST_BYTES, QUERY_SOCKET, Untrusted, check_peer, owner_only_folder,
                                           socket_path)

log = logging.getLogger("reconciler")

REQUEST_SECONDS = 2.0  # for a request to arrive in full: a client that connects and stalls holds no thread longer
REPLY_SECONDS = 10.0  # for a client to take the answer: one that stops reading gives its slot back
MAX_CONCURRENT = 4  # answers computed at once; more are declined (the command then computes its own)
KEEPALIVE_SECONDS = 2.0
STOP_SECONDS = 5.0  # for the answers under way when the daemon stops (an apply told "stopping") to be sent
BUSY = {"declined": f"the daemon is answering {MAX_CONCURRENT} requests already"}

# runs one request, printing as the command does; returns its exit code. The event is set once the client has gone
# (a keep-alive could not be sent): what only the client would have read, an apply's --wait, may end early
Answer = Callable[[dict[str, Any], threading.Event], int]


class Declined(Exception):
    """Not a request this daemon answers (another folder, another state directory, not a read-only command)."""


class _ThreadRouted(io.TextIOBase):
    """sys.stdout / sys.stderr for the whole process, but what an answering thread prints goes to its capture."""

    encoding = "utf-8"

    def __init__(self, default: TextIO) -> None:
        self._default = default
        self._local = threading.local()

    def capture(self, buffer: io.StringIO | None) -> None:
        self._local.buffer = buffer

    def _target(self) -> TextIO:
        return getattr(self._local, "buffer", None) or self._default

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def fileno(self) -> int:
        return self._default.fileno()


class QueryServer:
    def __init__(self, state_dir: Path, answer: Answer) -> None:
        self.state_dir, self.path = state_dir, socket_path(state_dir)
        self._answer = answer
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._serving = 0  # requests taken and not yet answered
        self._served = threading.Condition()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        """Listen, or log why not and leave commands to compute their own answers. Call with the state lock held:
        a socket file left there is then a dead daemon's, never a live one's."""
        try:
            with owner_only_folder(self.state_dir, create=True) as folder:
                address = f"{folder}/{QUERY_SOCKET}"
                Path(address).unlink(missing_ok=True)
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(address)
                os.chmod(address, 0o600)
                listener.listen(16)
        except (OSError, Untrusted) as error:
            log.error("not answering commands over %s: %s; they compute their own answers", self.path, error)
            return
        self._listener = listener
        if not isinstance(sys.stdout, _ThreadRouted):
            sys.stdout, sys.stderr = _ThreadRouted(sys.stdout), _ThreadRouted(sys.stderr)
        threading.Thread(target=self._accept, args=(listener,), name="query-accept", daemon=True).start()

    def stop(self) -> None:
        """No client finds the socket any more; the answers under way are sent (for STOP_SECONDS at most): a client
        whose connection closes unanswered must take it that the daemon died mid-request."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self.path.unlink(missing_ok=True)
        with self._served:
            self._served.wait_for(lambda: self._serving == 0, STOP_SECONDS)
        listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            if not self._slots.acquire(blocking=False):
                with connection, suppress(OSError):  # the command computes its own answer (apply: finds it busy)
                    connection.setblocking(False)
                    connection.sendall(json.dumps(BUSY).encode())
                continue
            with self._served:
                self._serving += 1
            threading.Thread(target=self._serve, args=(connection,), name="query", daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                check_peer(connection)
                connection.settimeout(REQUEST_SECONDS)
                request = json.loads(_read_request(connection))
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                connection.settimeout(REPLY_SECONDS)
                reply = self._answered_alive(request, connection)
                if reply is not None:
                    connection.sendall(json.dumps(reply).encode())
        except (OSError, ValueError, RecursionError, Untrusted) as error:  # RecursionError: JSON nested too deep
            log.warning("query refused: %s", error)
        finally:
            self._slots.release()
            with self._served:
                self._serving -= 1
                self._served.notify_all()

    def _answered_alive(self, request: dict[str, Any], connection: socket.socket) -> dict[str, Any] | None:
        """The answer, computed in a thread of its own while this one keeps the client told that the daemon lives. A
        client that leaves does not cut a pass short: it runs to its end, unsent (None); a wait after it ends."""
        reply: dict[str, Any] = {}
        gone = threading.Event()
        answering = threading.Thread(target=lambda: reply.update(self._answered(request, gone)), name="query-answer",
                                     daemon=True)
        answering.start()
        try:
            answering.join(KEEPALIVE_SECONDS)
            while answering.is_alive():
                connection.sendall(b"\n")
                answering.join(KEEPALIVE_SECONDS)
        except OSError as error:
            log.info("the client of a %s request left before its answer (%s): the answer is not sent",
                     request.get("command"), error)
            gone.set()
            answering.join()
            return None
        return reply

    def _answered(self, request: dict[str, Any], gone: threading.Event) -> dict[str, Any]:
        out, err = io.StringIO(), io.StringIO()
        assert isinstance(sys.stdout, _ThreadRouted) and isinstance(sys.stderr, _ThreadRouted)
        sys.stdout.capture(out)
        sys.stderr.capture(err)
        try:
            code = self._answer(request, gone)
        except Declined as why:
            return {"declined": str(why)}
        except Exception:  # noqa: BLE001 - a failed answer must not end the daemon; it may have acted (an apply's
            # round had begun): "failed", not "declined" (a read-only command then computes its own answer)
            log.exception("answering %s failed", request.get("command"))
            return {"failed": "the daemon failed while answering; its log says why"}
        finally:
            sys.stdout.capture(None)
            sys.stderr.capture(None)
        log.debug("answered %s (exit %s)", request.get("command"), code)
        return {"exit": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _read_request(connection: socket.socket) -> bytes:
    """One line, at most MAX_REQUEST_BYTES."""
    received = b""
    while b"\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
        if len(received) > MAX_REQUEST_BYTES:
            raise ValueError(f"a request longer than {MAX_REQUEST_BYTES} bytes")
    return received.split(b"\n", 1)[0]
