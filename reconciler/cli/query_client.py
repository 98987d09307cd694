"""status, describe, logs and validate first ask a running daemon (control/query_server.py): it has the models and
the pipeline loaded, so its answer costs milliseconds where computing one costs half a second of imports. When no
daemon answers (none runs, it watches another folder, the socket is stale or not this account's own) the command
computes its answer as before (RECONCILER_ASK_DAEMON=0: always). Imports only the standard library and click: that is what a quick answer costs."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import click

from reconciler.base.private_socket import QUERY_SOCKET, Untrusted, check_peer, check_socket, owner_only_folder

ANSWER_SECONDS = 10.0  # a daemon slower than this (a pass holding the machine) is given up on: the command computes
_answering = threading.local()  # set while the daemon runs a command for a client: that run must not ask again


def answer_from_daemon(path: Path, state_dir: Path) -> None:
    """Print the daemon's answer to the running command and exit with its code; return when no daemon answers."""
    if getattr(_answering, "active", False) or os.environ.get("RECONCILER_ASK_DAEMON") == "0":
        return
    context = click.get_current_context()
    cwd = os.getcwd()
    request = {"command": context.command.name, "cwd": cwd,
               "params": {name: str(value) if isinstance(value, Path) else value
                          for name, value in context.params.items()}}
    try:
        reply = json.loads(_ask(state_dir, json.dumps(request).encode() + b"\n"))
        code, out, err = int(reply["exit"]), str(reply["stdout"]), str(reply["stderr"])
    except (OSError, Untrusted, ValueError, KeyError, TypeError):
        return  # no daemon, a stale socket, a refusal or a declined request: compute the answer here
    for value in context.params.values():  # the daemon read PATH as cwd/PATH: print it as it was typed
        if isinstance(value, Path) and not value.is_absolute():
            out, err = _as_typed(out, Path(cwd) / value, value), _as_typed(err, Path(cwd) / value, value)
    click.echo(out, nl=False)
    click.echo(err, nl=False, err=True)
    context.exit(code)


def answering(active: bool) -> None:
    _answering.active = active


def _ask(state_dir: Path, request: bytes) -> bytes:
    with owner_only_folder(state_dir) as folder, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        check_socket(folder)
        connection.settimeout(ANSWER_SECONDS)
        connection.connect(f"{folder}/{QUERY_SOCKET}")
        check_peer(connection)
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _as_typed(text: str, absolute: Path, typed: Path) -> str:
    inside = "" if str(typed) == "." else f"{typed}/"  # Path(".") / "a.yaml" prints as a.yaml
    return text.replace(f"{absolute}/", inside).replace(str(absolute), str(typed))
