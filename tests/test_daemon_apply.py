"""`apply` with this account's daemon watching the folder: the daemon runs the pass over what the folder holds when
apply asks, and apply prints and exits with what the pass reports; a daemon that stops mid-request is an error."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.base.private_socket import socket_path
from reconciler.cli.query_client import SILENCE_SECONDS
from reconciler.control.query_server import MAX_CONCURRENT, QueryServer
from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.test_cli_imports import HEAVY, imported, top_level
from tests.test_daemon_queries import answering

IN_PROCESS = {**os.environ, "RECONCILER_ASK_DAEMON": "0"}
CRASHES = "import sys; print('bye', flush=True); sys.exit(3)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
RECREATED = "Workload/hello: recreate (spec.args changed) -> approve, done"


def asked_passes(workspace: Workspace) -> int:
    return workspace.daemon_log.read_text().count("pass: apply")


def running_args(workspace: Workspace, name: str) -> list[list[str]]:
    return [process.cmdline()[3:] for process in workspace.owned_processes(name)]


@pytest.fixture
def watched(workspace: Workspace) -> Iterator[Workspace]:
    workspace.write("hello.yaml", workload_yaml("hello", args=("v1",)))
    yield answering(workspace)


def test_apply_converges_what_was_written_just_before_it(watched: Workspace) -> None:
    """The pass reads the folder when apply asks: a file still open for writing, which the daemon's own watch holds
    back as mid-save, is in it, as it would be in a one-shot apply."""
    seen = watched.daemon_log.read_text().count("name='hello.yaml'")
    with (watched.desired / "hello.yaml").open("w") as still_open:
        still_open.write(workload_yaml("hello", args=("v2",)))
        still_open.flush()
        wait_for(lambda: watched.daemon_log.read_text().count("name='hello.yaml'") > seen,
                 what="the daemon's watch to see the write")  # its pass now holds the file as mid-save
        done = watched.cli("apply")
        assert done.returncode == 0, done.stderr
        assert running_args(watched, "hello") == [["v2"]]  # at once: the pass ran before apply exited
    assert asked_passes(watched) == 1
    assert done.stderr.endswith(f" INFO {RECREATED}\n"), done.stderr  # logged as a one-shot apply logs it
    assert watched.resource_status("hello.yaml", "hello")["observedGeneration"] == 2


def test_load_errors_are_reported_with_file_and_line(watched: Workspace) -> None:
    watched.write("bad.yaml", "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: bad}\n"
                              "spec:\n  comand: [x]\n")
    done = watched.cli("apply")
    assert done.returncode == 1
    assert done.stderr.count(f"{watched.desired}/bad.yaml:5:3 spec.comand") == 1, done.stderr  # once, as in process
    assert asked_passes(watched) == 1
    assert running_args(watched, "hello") == [["v1"]]  # a bad file beside it changes nothing that runs


def test_wait_waits_for_ready_through_the_daemon(watched: Workspace) -> None:
    watched.write("hello.yaml", workload_yaml("hello", args=("v2",)))
    began = time.monotonic()
    done = subprocess.run([PYTHON, "-m", "reconciler", "--log-level", "WARNING", "--log-format", "json", "apply",
                           str(watched.desired), "--state-dir", str(watched.state), "--wait", "--min-ready-seconds",
                           "3"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr  # at the client's level: no INFO line
    assert time.monotonic() - began >= 3.0
    [process] = watched.owned_processes("hello")
    assert process.cmdline()[3:] == ["v2"] and time.time() - process.create_time() >= 3.0
    assert watched.condition("hello.yaml", "hello")["status"] == "True"

    watched.write("hello.yaml", workload_yaml("hello", code=CRASHES, restart={"policy": "Never"}))
    failed = watched.cli("apply", "--wait")
    assert failed.returncode == 1 and "Workload/hello: " in failed.stderr, failed.stderr
    watched.write("hello.yaml", workload_yaml("hello", args=("v3",)))
    late = watched.cli("apply", "--wait", "--timeout", "1", "--min-ready-seconds", "30")
    assert late.returncode == 1 and late.stderr.endswith("\ntimed out after 1.0s waiting for: Workload/hello\n")


def test_a_daemon_killed_mid_request_is_a_failure(watched: Workspace) -> None:
    watched.write("hello.yaml", workload_yaml("hello", args=("v2",)))
    client = subprocess.Popen([PYTHON, "-m", "reconciler", "apply", str(watched.desired), "--state-dir",
                               str(watched.state), "--wait", "--min-ready-seconds", "60", "--timeout", "120"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: asked_passes(watched) == 1, timeout=30, what="the asked pass")
    watched.stop_daemon(signal.SIGKILL)
    _, stderr = client.communicate(timeout=30)
    assert client.returncode == 1
    assert "stopped answering before the pass it was asked for ended" in stderr, stderr


def test_requests_that_wait_for_a_round_share_the_next(watched: Workspace) -> None:
    """A round asked while another runs starts after it, on a snapshot taken after the request; two such requests
    are served by one round, and each reports what was done since the last edit before it, whichever pass did it."""
    def apply() -> subprocess.Popen[str]:
        return subprocess.Popen([PYTHON, "-m", "reconciler", "apply", str(watched.desired), "--state-dir",
                                 str(watched.state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def arrived() -> int:
        return watched.daemon_log.read_text().count("apply asked for a pass")

    def stubborn(version: str) -> str:  # its stop takes the whole grace period: the round replacing it is long
        return workload_yaml("hello", code=STUBBORN, args=(version,), terminationGracePeriodSeconds=6)

    watched.write("hello.yaml", stubborn("v1"))
    assert watched.cli("apply").returncode == 0
    watched.write("hello.yaml", stubborn("v2"))
    first = apply()
    wait_for(lambda: asked_passes(watched) == 2, timeout=30, what="the first asked pass")
    later = [apply(), apply()]
    wait_for(lambda: arrived() == 4, timeout=30, what="the later requests to arrive")
    watched.write("hello.yaml", stubborn("v3"))  # the daemon's own pass may do it first
    for client in (first, *later):
        assert client.wait(timeout=60) == 0, client.communicate()[1]
    assert asked_passes(watched) == 3
    assert running_args(watched, "hello") == [["v3"]]
    for client in later:
        stderr = client.communicate()[1]
        assert stderr.count(RECREATED) == 2, stderr  # v2's (done after they arrived) and v3's


def test_the_pass_is_the_daemons_own_only(watched: Workspace) -> None:
    """Forced in-process, or for another folder with this state directory: the state directory is busy, as before."""
    for env, arguments in ((IN_PROCESS, (str(watched.desired),)), (None, (str(watched.desired.parent),))):
        done = subprocess.run([PYTHON, "-m", "reconciler", "apply", *arguments, "--state-dir", str(watched.state)],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 1 and "is held by pid" in done.stderr, done.stderr
    assert asked_passes(watched) == 0
    declined = watched.cli("apply", "--allow-empty")
    assert declined.returncode == 1 and "did not take this apply: --allow-empty" in declined.stderr, declined.stderr


def test_apply_answered_by_the_daemon_imports_no_models(watched: Workspace) -> None:
    modules = imported("apply", str(watched.desired), "--state-dir", str(watched.state), cwd=watched.desired.parent)
    assert "reconciler.base.private_socket" in modules and asked_passes(watched) == 1  # it asked
    assert top_level(modules) & set(HEAVY) == set()
    assert "reconciler.control.reconciler" not in modules and "reconciler.control.loop" not in modules


def test_without_a_daemon_apply_runs_in_process(watched: Workspace) -> None:
    watched.stop_daemon(signal.SIGKILL)
    assert socket_path(watched.state).exists()  # a dead daemon's socket: nobody answers on it
    watched.write("hello.yaml", workload_yaml("hello", args=("v2",)))
    done = watched.cli("apply")
    assert done.returncode == 0 and done.stderr.endswith(f" INFO {RECREATED}\n"), done.stderr
    assert running_args(watched, "hello") == [["v2"]]


def test_a_pass_longer_than_the_silence_allowed_is_waited_for(watched: Workspace) -> None:
    """The daemon says it lives while its pass runs: apply waits as long as the pass takes, not SILENCE_SECONDS."""
    watched.write("hello.yaml", workload_yaml("hello", args=("v2",)))
    began = time.monotonic()
    done = watched.cli("apply", "--wait", "--min-ready-seconds", str(SILENCE_SECONDS + 3))
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began > SILENCE_SECONDS + 3


def test_a_hung_daemon_is_a_failure(watched: Workspace) -> None:
    """A daemon stopped mid-request keeps its socket open but says nothing: after SILENCE_SECONDS apply fails."""
    assert watched._daemon is not None
    watched.write("hello.yaml", workload_yaml("hello", args=("v2",)))
    client = subprocess.Popen([PYTHON, "-m", "reconciler", "apply", str(watched.desired), "--state-dir",
                               str(watched.state), "--wait", "--min-ready-seconds", "120", "--timeout", "300"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: asked_passes(watched) == 1, timeout=30, what="the asked pass")
    watched._daemon.send_signal(signal.SIGSTOP)
    try:
        _, stderr = client.communicate(timeout=SILENCE_SECONDS + 30)
    finally:
        watched._daemon.send_signal(signal.SIGCONT)
    assert client.returncode == 1 and f"no word from it for {SILENCE_SECONDS:.0f} s" in stderr, stderr


def waiting_apply(workspace: Workspace, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "reconciler", "apply", str(workspace.desired), "--state-dir",
                             str(workspace.state), "--wait", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def arrivals(workspace: Workspace) -> int:
    return workspace.daemon_log.read_text().count("apply asked for a pass")


def test_a_busy_daemon_is_reported_as_declining(watched: Workspace) -> None:
    """Every slot taken: the daemon declines without reading the request (the kernel then resets the connection
    after the reply). apply says it was not taken and finds the state directory busy, never 'what it did is not
    known' (it did nothing)."""
    stop, connected = threading.Event(), threading.Semaphore(0)

    def hold_a_slot() -> None:  # a request that arrives a byte at a time, never whole
        with socket.socket(socket.AF_UNIX) as held:
            held.connect(str(socket_path(watched.state)))
            connected.release()
            while not stop.is_set():
                held.send(b" ")
                time.sleep(0.2)

    holders = [threading.Thread(target=hold_a_slot) for _ in range(MAX_CONCURRENT)]
    for holder in holders:
        holder.start()
    try:
        for _ in holders:
            assert connected.acquire(timeout=10)
        time.sleep(0.5)  # each accepted, its slot taken
        for _ in range(5):
            done = watched.cli("apply")
            assert done.returncode == 1, done.stderr
            assert "did not take this apply: the daemon is answering" in done.stderr, done.stderr
            assert "is held by pid" in done.stderr and "not known" not in done.stderr, done.stderr
    finally:
        stop.set()
        for holder in holders:
            holder.join()


def test_a_wait_holds_back_no_other_apply(watched: Workspace) -> None:
    """A --wait waits after its round, without the round lock: a plain apply meanwhile runs its own round at once
    (in process it would find the state directory busy at once, never wait the other's wait out)."""
    watched.write("hello.yaml", workload_yaml("hello", args=("v2",)))
    waiting = waiting_apply(watched, "--min-ready-seconds", "30", "--timeout", "60")
    try:
        wait_for(lambda: asked_passes(watched) == 1, timeout=30, what="the waiting apply's pass")
        watched.write("other.yaml", workload_yaml("other"))
        done = watched.cli("apply", timeout=20)
        assert done.returncode == 0 and "Workload/other: create" in done.stderr, done.stderr
        assert waiting.poll() is None  # still waiting its 30 s out
    finally:
        waiting.kill()
        waiting.wait()


def test_a_client_that_left_gives_its_wait_up(watched: Workspace) -> None:
    """Clients that leave mid --wait (Ctrl-C) free their slots within a keep-alive or two, not at their timeout:
    before, every slot stayed held and the next apply was declined."""
    watched.write("hello.yaml", workload_yaml("hello", args=("v2",)))
    waiting = [waiting_apply(watched, "--min-ready-seconds", "120", "--timeout", "300") for _ in range(MAX_CONCURRENT)]
    wait_for(lambda: arrivals(watched) == MAX_CONCURRENT, timeout=30, what="every waiting apply to arrive")
    for client in waiting:
        client.send_signal(signal.SIGINT)
        client.wait(timeout=10)
    wait_for(lambda: watched.daemon_log.read_text().count("left before its answer") == MAX_CONCURRENT, timeout=20,
             what="the daemon to see them leave")
    done = watched.cli("apply", timeout=20)
    assert done.returncode == 0 and "did not take" not in done.stderr, done.stderr


def test_what_apply_prints_does_not_depend_on_which_pass_acted(watched: Workspace) -> None:
    """The daemon's own watch decides 30 ms after a save: apply, asked after that, prints the decision as a one-shot
    apply would (a denial, a create), once; a second apply with no edit between prints neither again."""
    for name, executable, line in (("denied", "/bin/sleep", "create (not running) -> deny, not done"),
                                   ("allowed", PYTHON, "create (not running) -> approve, done")):
        watched.write(f"{name}.yaml", workload_yaml(name).replace(PYTHON, executable))
        wait_for(lambda: f"Workload/{name}: {line}" in watched.daemon_log.read_text(), timeout=30,
                 what="the daemon's own pass")  # decided before apply asks
        done = watched.cli("apply")
        assert done.returncode == 0 and done.stderr.count(f" INFO Workload/{name}: {line}\n") == 1, done.stderr
        again = watched.cli("apply")
        assert again.returncode == 0 and f"Workload/{name}: {line}" not in again.stderr, again.stderr


def test_an_answer_that_fails_after_it_began_is_not_known(workspace: Workspace,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon whose answer raises may have acted: apply says what it did is not known, and applies nothing itself."""
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # the server routes them per thread: restored after
    monkeypatch.setattr(sys, "stderr", sys.stderr)

    def answer(request: dict[str, Any], gone: threading.Event) -> int:
        raise RuntimeError("a bug, after the round began")

    workspace.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = QueryServer(workspace.state, answer)
    server.start()
    try:
        done = workspace.cli("apply")
    finally:
        server.stop()
    assert done.returncode == 1, done.stderr
    assert "failed in the pass it was asked for" in done.stderr and "what it did is not known" in done.stderr
    assert workspace.owned_processes() == []


def test_a_client_level_below_the_daemons_is_printed(workspace: Workspace) -> None:
    """--log-level DEBUG against an INFO daemon prints the pass's DEBUG lines, and the daemon's own log stays INFO."""
    workspace.write("denied.yaml", workload_yaml("denied").replace(PYTHON, "/bin/sleep"))
    with workspace.daemon_log.open("a") as log:
        workspace._daemon = subprocess.Popen(
            [PYTHON, "-m", "reconciler", "--log-level", "INFO", "run", str(workspace.desired), "--state-dir",
             str(workspace.state)], stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(lambda: "Workload/denied: create" in workspace.daemon_log.read_text(), timeout=30, what="the denial")
    wait_for(lambda: socket_path(workspace.state).exists(), what="the query socket")
    done = workspace.cli("--log-level", "DEBUG", "apply", str(workspace.desired), "--state-dir", str(workspace.state))
    assert done.returncode == 0 and " DEBUG Workload/denied: create (not running) -> deny, not done" in done.stderr, \
        done.stderr
    assert " DEBUG " not in workspace.daemon_log.read_text()


def test_a_pass_asked_of_a_stopping_daemon_is_answered_at_once(workspace: Workspace) -> None:
    """After the loop's last answer, a request would wait for the process to exit: it is told 'stopping' instead."""
    from reconciler.control.asked_passes import STOPPING
    from reconciler.control.daemon import Daemon
    from reconciler.control.reconciler import Reconciler

    daemon = Daemon(Reconciler(workspace.desired, workspace.state))
    daemon.stop()
    asked = daemon.asked.ask()
    assert asked.wait() == STOPPING


def test_a_wait_under_way_when_the_daemon_stops_is_told_so(watched: Workspace) -> None:
    """SIGTERM mid --wait: the wait ends and its client is told why before the daemon exits (not 'not known')."""
    watched.write("hello.yaml", workload_yaml("hello", args=("v2",)))
    client = waiting_apply(watched, "--min-ready-seconds", "60", "--timeout", "120")
    wait_for(lambda: asked_passes(watched) == 1, timeout=30, what="the asked pass")
    assert watched.stop_daemon(signal.SIGTERM) == 0
    _, stderr = client.communicate(timeout=30)
    assert client.returncode == 1 and stderr.endswith("stopped waiting: the daemon is stopping\n"), stderr
