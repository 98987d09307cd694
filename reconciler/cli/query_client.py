"""status, describe, logs and validate first ask a running daemon (control/query_server.py): it has the models and
the pipeline loaded, so its answer costs milliseconds where computing one costs half a second of imports. When no
daemon answers (none runs, it watches another folder, the socket is stale or not this account's own) the command
computes its answer as before (RECONCILER_ASK_DAEMON=0: always). `apply` asks the daemon to run its pass the same way
(apply_through_daemon). Imports only the standard library and click: that is what a quick answer costs."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import click

from reconciler.base.private_socket import QUERY_SOCKET, Untrusted, check_peer, check_socket, owner_only_folder

ANSWER_SECONDS = 10.0  # a daemon slower than this (a pass holding the machine) is given up on: the command computes
# An asked apply's pass may pull an image or fetch a model for minutes: it is waited for as long as the daemon says,
# every KEEPALIVE_SECONDS (control/query_server.py), that it lives; this long without a word, it is taken for hung
SILENCE_SECONDS = 30.0
NOT_KNOWN = "what it did is not known: `reconciler status` shows what runs"
_answering = threading.local()  # set while the daemon runs a command for a client: that run must not ask again


class NoAnswer(Exception):
    """The daemon took the request and stopped before it answered (killed, hung, or its socket closed)."""


class Failed(Exception):
    """The daemon took the request and failed while answering it (it may have acted)."""


def answer_from_daemon(path: Path, state_dir: Path) -> None:
    """Print the daemon's answer to the running command and exit with its code; return when no daemon answers."""
    if not _may_ask():
        return
    try:
        with _connect(state_dir) as connection:
            _send(connection)
            reply = _receive(connection, time.monotonic() + ANSWER_SECONDS)
        code = _answer_code(reply)
    except (OSError, Untrusted, NoAnswer, ValueError, Failed):
        return  # no daemon, a stale socket, a refusal, a declined or failed request: compute the answer here
    _print(reply, code)


def apply_through_daemon(path: Path, state_dir: Path) -> None:
    """When this account's daemon watches PATH with STATE_DIR, it runs the pass: print what it reports and exit with
    its code. Return when none takes the request (the command applies here, or finds the state directory busy). A
    daemon that took the request and stops before it answers is an error: what it did is not known."""
    if not _may_ask():
        return
    try:
        connection = _connect(state_dir)
    except (OSError, Untrusted):
        return
    with connection:
        try:
            _send(connection)
            sent = True
        except OSError:  # it closed first: it declined without reading (its reply says so), or died
            sent = False
        try:
            reply = _receive(connection, None)
            code = _answer_code(reply)
        except (OSError, NoAnswer) as error:
            if not sent:
                return  # it never had the request: nothing was done for it
            raise click.ClickException(f"the daemon on {state_dir} stopped answering before the pass it was asked for "
                                       f"ended ({error}); {NOT_KNOWN}") from None
        except Failed as error:
            raise click.ClickException(f"the daemon on {state_dir} failed in the pass it was asked for ({error}); "
                                       f"{NOT_KNOWN}") from None
        except ValueError as declined:
            click.echo(f"the daemon watching this state directory did not take this apply: {declined}", err=True)
            return
    _print(reply, code)


def answering(active: bool) -> None:
    _answering.active = active


def _may_ask() -> bool:
    return not getattr(_answering, "active", False) and os.environ.get("RECONCILER_ASK_DAEMON") != "0"


def _connect(state_dir: Path) -> socket.socket:
    """A connection to the state directory's query socket, once the folder, the socket and its peer are checked."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with owner_only_folder(state_dir) as folder:
            check_socket(folder)
            connection.settimeout(ANSWER_SECONDS)
            connection.connect(f"{folder}/{QUERY_SOCKET}")
        check_peer(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _send(connection: socket.socket) -> None:
    context = click.get_current_context()
    request = {"command": context.command.name, "cwd": os.getcwd(),
               "params": {name: str(value) if isinstance(value, Path) else value
                          for name, value in context.params.items()},
               "logging": context.find_root().params}  # --log-level and --log-format: how apply prints its lines
    connection.sendall(json.dumps(request).encode() + b"\n")


def _receive(connection: socket.socket, deadline: float | None) -> dict[str, Any]:
    """The reply, read to its end: by `deadline` (monotonic), or, with none, for as long as the daemon keeps
    saying it lives. Raises NoAnswer when it ends, or falls silent, without one."""
    chunks, reset = [], False
    while True:
        connection.settimeout(SILENCE_SECONDS if deadline is None else max(0.001, deadline - time.monotonic()))
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            raise NoAnswer(f"no word from it for {SILENCE_SECONDS:.0f} s" if deadline is None else "too slow") from None
        except ConnectionResetError:  # a daemon that declines closes without reading the request: after its answer
            chunk, reset = b"", True
        if not chunk:
            break
        chunks.append(chunk)
    received = b"".join(chunks)
    if not received.strip():
        raise NoAnswer("it closed the connection")
    try:
        reply = json.loads(received)  # keep-alive blank lines before the answer are JSON whitespace
    except ValueError:
        raise NoAnswer("it closed the connection" if reset else "its answer was cut short") from None
    if not isinstance(reply, dict):
        raise NoAnswer("its answer is not one")
    return reply


def _answer_code(reply: dict[str, Any]) -> int:
    """The answer's exit code; ValueError (saying why) when the daemon declined or answered nothing usable, Failed
    when it failed while answering."""
    if "failed" in reply:
        raise Failed(str(reply["failed"]))
    if "declined" in reply:
        raise ValueError(str(reply["declined"]))
    if not all(isinstance(reply.get(name), kind) for name, kind in (("exit", int), ("stdout", str), ("stderr", str))):
        raise ValueError("not an answer")
    return int(reply["exit"])


def _print(reply: dict[str, Any], code: int) -> None:
    context = click.get_current_context()
    out, err, cwd = str(reply["stdout"]), str(reply["stderr"]), os.getcwd()
    for value in context.params.values():  # the daemon read PATH as cwd/PATH: print it as it was typed
        if isinstance(value, Path) and not value.is_absolute():
            out, err = _as_typed(out, Path(cwd) / value, value), _as_typed(err, Path(cwd) / value, value)
    click.echo(out, nl=False)
    click.echo(err, nl=False, err=True)
    context.exit(code)


def _as_typed(text: str, absolute: Path, typed: Path) -> str:
    inside = "" if str(typed) == "." else f"{typed}/"  # Path(".") / "a.yaml" prints as a.yaml
    return text.replace(f"{absolute}/", inside).replace(str(absolute), str(typed))
