"""status, describe, logs and validate ask a running daemon over the socket in its state directory, print what the
command computes without it, and never believe a socket that is not this account's own daemon's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.base.private_socket import owner_only_folder, socket_path
from reconciler.cli.common import default_state_dir
from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.test_cli_imports import HEAVY, imported, top_level

NOBODY = 65534
PLANTED = {"exit": 0, "stdout": "PLANTED ANSWER\n", "stderr": ""}
BAD_SPEC = "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: bad}\nspec: {bogus: 1}\n"


def without_ages(output: str) -> object:
    """status -o json rows less their age, which moves on between two runs a second apart."""
    return [{key: value for key, value in row.items() if key != "age"} for row in json.loads(output)]


def answered(workspace: Workspace) -> int:
    return workspace.daemon_log.read_text().count("answered ")


@pytest.fixture
def running(workspace: Workspace) -> Iterator[Workspace]:
    workspace.write("hello.yaml", workload_yaml("hello"))
    workspace.write("bad.yaml", BAD_SPEC)
    yield answering(workspace)


def answering(workspace: Workspace) -> Workspace:
    """`workspace` with its daemon started, hello Ready and the query socket there."""
    workspace.start_daemon()
    wait_for(lambda: (workspace.condition("hello.yaml", "hello") or {}).get("status") == "True", timeout=30,
             what="hello Ready")
    wait_for(lambda: socket_path(workspace.state).exists(), what="the query socket")
    return workspace


def test_the_daemon_answers_what_the_command_computes(running: Workspace) -> None:
    for command, compare in ((("status", "-o", "json"), without_ages), (("describe", "hello"), str),
                             (("describe", "nobody"), str), (("logs", "hello", "--tail", "5"), str)):
        before = answered(running)
        asked, computed = between_passes(running, command, compare)
        assert answered(running) > before, f"{command}: the daemon did not answer"
        assert asked == computed, command
    assert "hello" in running.cli("status").stdout and "bad.yaml" in running.cli("status").stderr


def between_passes(workspace: Workspace, command: tuple[str, ...], compare: Callable[[str], object]) -> tuple[object, object]:
    """(asked, computed) outputs of COMMAND, the answer asked between two computed ones that agree: the running daemon
    may record a change between two commands (a condition's transition), and then neither answer is wrong."""
    computed_here = {**os.environ, "RECONCILER_ASK_DAEMON": "0"}

    def outcome(done: subprocess.CompletedProcess[str]) -> object:
        return done.returncode, compare(done.stdout), done.stderr

    for _ in range(5):
        first = outcome(workspace.cli(*command, env=computed_here))
        asked = outcome(workspace.cli(*command))
        if outcome(workspace.cli(*command, env=computed_here)) == first:
            return asked, first
    raise AssertionError(f"{command}: the state kept changing")


def test_relative_paths_print_as_typed(running: Workspace) -> None:
    """The daemon reads the client's PATH from the client's folder; what it prints names it as it was typed."""
    computed_here = {**os.environ, "RECONCILER_ASK_DAEMON": "0"}
    for env in (None, computed_here):
        done = subprocess.run([PYTHON, "-m", "reconciler", "status", "desired", "--state-dir", "state"],
                              cwd=running.desired.parent, capture_output=True, text=True, timeout=60, env=env)
        assert done.stderr.startswith("desired/bad.yaml:"), done.stderr


def test_validate_asks_the_daemon_of_the_folders_default_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home"))
    env = dict(os.environ)
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "bad.yaml").write_text(BAD_SPEC)
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([PYTHON, "-m", "reconciler", "--log-level", "DEBUG", "run", str(folder)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: socket_path(default_state_dir(folder)).exists(), what="the query socket")
        asked = subprocess.run([PYTHON, "-m", "reconciler", "validate", str(folder)], env=env, capture_output=True,
                               text=True, timeout=60)
        computed = subprocess.run([PYTHON, "-m", "reconciler", "validate", str(folder)], capture_output=True,
                                  text=True, timeout=60, env={**env, "RECONCILER_ASK_DAEMON": "0"})
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert "answered validate (exit 1)" in (tmp_path / "daemon.log").read_text()
    assert (asked.returncode, asked.stdout, asked.stderr) == (computed.returncode, computed.stdout, computed.stderr)
    assert asked.returncode == 1 and "spec.bogus" in asked.stdout


def test_a_dead_daemons_socket_is_passed_over(running: Workspace) -> None:
    running.stop_daemon(signal.SIGKILL)
    assert socket_path(running.state).exists()  # a SIGKILL leaves it behind
    done = running.cli("status")
    assert done.returncode == 0 and "hello" in done.stdout and "No daemon watches this folder" in done.stdout


class PlantedServer:
    """A process listening where the daemon would, answering every request with PLANTED."""

    def __init__(self, path: Path, uid: int | None = None) -> None:
        staging = Path(f"/tmp/planted-{os.getpid()}-{threading.get_ident()}")
        staging.mkdir(mode=0o777)
        staging.chmod(0o777)
        code = textwrap.dedent(f"""\
            import json, os, socket, sys
            listener = socket.socket(socket.AF_UNIX)
            listener.bind({str(staging / "s")!r})
            listener.listen()
            print("ready", flush=True)
            while True:
                connection, _ = listener.accept()
                connection.recv(65536)
                connection.sendall(json.dumps({PLANTED!r}).encode())
                connection.close()
            """)
        self.process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                        user=uid)
        assert self.process.stdout is not None and self.process.stdout.readline() == "ready\n"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(staging / "s", path)  # the bound socket keeps answering under its new name
        os.chown(path, os.geteuid(), os.getegid())
        path.chmod(0o600)
        shutil.rmtree(staging)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def planted(workspace: Workspace) -> Iterator[Workspace]:
    workspace.write("hello.yaml", workload_yaml("hello"))
    yield workspace


@pytest.mark.parametrize("tamper", ["none", "socket mode", "socket owner", "folder mode", "peer uid"])
def test_a_planted_socket_is_never_believed(planted: Workspace, tamper: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("another uid's socket and process need root to set up")
    path = socket_path(planted.state)
    server = PlantedServer(path, uid=NOBODY if tamper == "peer uid" else None)
    try:
        if tamper == "socket mode":
            path.chmod(0o666)
        elif tamper == "socket owner":
            os.chown(path, NOBODY, NOBODY)
        elif tamper == "folder mode":
            path.parent.chmod(0o777)
        done = planted.cli("status")
    finally:
        server.stop()
    if tamper == "none":  # the fixture's socket is one the command would believe: the refusals below are real
        assert done.stdout == PLANTED["stdout"]
    else:
        assert "PLANTED" not in done.stdout and "No daemon watches this folder" in done.stdout, done.stdout


def test_the_daemon_does_not_serve_from_a_folder_others_can_enter(workspace: Workspace) -> None:
    workspace.state.mkdir(mode=0o700)
    (workspace.state / "query").mkdir(mode=0o777)
    (workspace.state / "query").chmod(0o777)
    workspace.write("hello.yaml", workload_yaml("hello"))
    workspace.start_daemon()
    wait_for(lambda: "not answering commands" in workspace.daemon_log.read_text(), what="the daemon's refusal")
    assert not socket_path(workspace.state).exists()
    assert workspace.cli("status").returncode == 0



def test_status_answered_by_the_daemon_imports_no_models(running: Workspace) -> None:
    """The daemon has the models and the pipeline loaded: a command it answers imports neither."""
    for command in (("status", str(running.desired), "--state-dir", str(running.state)),
                    ("describe", "hello", str(running.desired), "--state-dir", str(running.state))):
        modules = imported(*command, cwd=running.desired.parent)
        assert "reconciler.base.private_socket" in modules  # it asked
        assert top_level(modules) & set(HEAVY) == set(), command
        assert "reconciler.control.reconciler" not in modules, command  # nor computed the answer itself
        assert "reconciler.drive.logs" not in modules, command  # what only a computed answer reads


def raw_request(state: Path, payload: bytes) -> bytes:
    """The daemon's reply to PAYLOAD; empty when it hung up without one."""
    with owner_only_folder(state) as folder, socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(30)
        connection.connect(f"{folder}/daemon.sock")
        try:
            connection.sendall(payload)
            connection.shutdown(socket.SHUT_WR)
            return b"".join(iter(lambda: connection.recv(65536), b""))
        except ConnectionError:  # it closed with the request unread (too long)
            return b""


def test_hostile_requests_are_refused_and_the_daemon_keeps_answering(running: Workspace) -> None:
    pid = running.pid("hello.yaml", "hello")
    here = {"cwd": str(running.desired.parent), "params": {"path": str(running.desired), "state_dir": str(running.state)}}
    assert raw_request(running.state, b"not json\n") == b""
    assert raw_request(running.state, b"[" * 50_000 + b"\n") == b""  # nested past the parser's recursion limit
    assert raw_request(running.state, b"x" * 200_000) == b""  # longer than a request may be
    for command in ("down", "forget", "run", "apply"):  # never run for a client; apply, without its options
        assert "declined" in json.loads(raw_request(running.state, json.dumps({**here, "command": command}).encode()))
    elsewhere = {**here, "params": {"path": str(running.desired.parent), "state_dir": str(running.state)}}
    assert "declined" in json.loads(raw_request(running.state, json.dumps({**elsewhere, "command": "status"}).encode()))
    with owner_only_folder(running.state) as folder:
        stalled = [socket.socket(socket.AF_UNIX) for _ in range(6)]  # connect, never send: more than may run at once
        for connection in stalled:
            connection.connect(f"{folder}/daemon.sock")
    try:
        assert running.cli("status").returncode == 0  # answered, by the daemon or (all its slots held) computed
    finally:
        for connection in stalled:
            connection.close()
    before = answered(running)
    wait_for(lambda: running.cli("status").returncode == 0 and answered(running) > before, timeout=30,
             what="the daemon answering again")
    assert running.pid("hello.yaml", "hello") == pid and running._daemon is not None and running._daemon.poll() is None
