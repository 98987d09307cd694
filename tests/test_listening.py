"""Observe, don't trust: what a native workload really listens on is read from the host each pass, shown in its
status and judged by the same rules as a declared host/port; a listen the policy does not allow stops it."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from reconciler.api.launch import LaunchSpec
from reconciler.api.meta import ResourceKey
from reconciler.api.policy import NetworkPolicy, Policy
from reconciler.api.status import Listen, ObservedExposure
from reconciler.control.reconciler import Reconciler
from reconciler.diff.plan import Action, Verb
from reconciler.gate.network import MOST_SHOWN, OBSERVED_RULE, judge_listens
from reconciler.gate.verdict import Decision, Facts, decide
from reconciler.observe.listening import ListenObserver, listening_table
from reconciler.observe.socket_diag import listeners
from tests.conftest import PYTHON, POLICY_YAML, Workspace, wait_for, workload_yaml
from tests.test_engines import free_port

TCP_ANY = Listen(address="0.0.0.0", port=8000, protocol="tcp")
TCP_LOOPBACK = Listen(address="127.0.0.1", port=8000, protocol="tcp")


# -- judging (pure) -------------------------------------------------------------------------


def test_an_observed_wildcard_listen_is_refused_with_its_address_and_port() -> None:
    found = judge_listens(42, (TCP_ANY,), ("127.0.0.1", 8000), NetworkPolicy(), "Policy/p", True)
    assert len(found.reasons) == 1
    assert found.reasons[0].startswith("0.0.0.0:8000/tcp: pid 42 listens on 0.0.0.0 (every interface), beyond this host")
    assert "add {address: '0.0.0.0', ports: [8000]} to spec.network.exposed" in found.reasons[0]
    assert found.undeclared == (TCP_ANY,)


def test_a_listen_as_declared_on_loopback_is_allowed() -> None:
    found = judge_listens(42, (TCP_LOOPBACK,), ("127.0.0.1", 8000), NetworkPolicy(), "Policy/p", True)
    assert (found.refused, found.undeclared) == ((), ())


def test_a_system_port_on_loopback_needs_the_policy_too() -> None:
    low = Listen(address="::1", port=79, protocol="udp")
    found = judge_listens(42, (low,), None, NetworkPolicy(), "Policy/p", True)
    assert found.reasons and found.reasons[0].startswith("[::1]:79/udp: pid 42 listens on port 79, below 1024")
    assert judge_listens(42, (low,), None, NetworkPolicy(privileged_ports=[79]), "Policy/p", True).refused == ()


def test_an_exposure_the_policy_lists_is_allowed_but_shown_when_elsewhere_than_declared() -> None:
    rules = NetworkPolicy.model_validate({"exposed": [{"address": "0.0.0.0", "ports": [8000]}]})
    found = judge_listens(42, (TCP_ANY, TCP_LOOPBACK), ("127.0.0.1", 8000), rules, "Policy/p", True)
    assert found.refused == () and found.undeclared == (TCP_ANY,)


def test_a_process_opening_thousands_of_sockets_is_named_by_a_bounded_few() -> None:
    flood = tuple(Listen(address="0.0.0.0", port=port, protocol="udp") for port in range(20000, 22000))
    found = judge_listens(42, flood, None, NetworkPolicy(), "Policy/p", True)
    assert len(found.refused) == 2000 and found.reasons[-1] == "and 1992 more" and len(found.reasons) == MOST_SHOWN + 1
    assert found.refused_listens == flood[:MOST_SHOWN]  # enough to refuse the same launch again


def launch(*args: str) -> LaunchSpec:
    return LaunchSpec(command=(PYTHON,), args=args, executable=PYTHON, env={}, working_dir="/", memory_limit=None,
                      listen=("127.0.0.1", 8000))


def test_a_launch_seen_exposing_is_not_started_again_until_the_policy_allows_it_or_the_spec_changes() -> None:
    seen = launch("-m", "http.server")
    exposure = ObservedExposure(pid=42, launch_digest=seen.digest, listening=(TCP_ANY,))
    start = Action(ResourceKey("Workload", "web"), Verb.create, "not running", 1, seen)
    facts = Facts(executables=(PYTHON,), exposure=exposure)
    trusting = {"native": {"trustedExecutables": [{"executable": PYTHON}]}}

    def with_rules(**spec: object) -> Policy:
        return Policy.model_validate({"apiVersion": "localaistack.dev/v1alpha1", "kind": "Policy",
                                      "metadata": {"name": "p"}, "spec": trusting | spec})

    refused = decide(start, with_rules(), facts)
    assert refused.decision is Decision.deny and [reason.rule for reason in refused.reasons] == [OBSERVED_RULE]
    assert "this launch's last run: 0.0.0.0:8000/tcp: pid 42 was seen listening on 0.0.0.0" in str(refused.reasons[0])
    assert decide(start, with_rules(network={"exposed": [{"address": "0.0.0.0"}]}), facts).approved
    edited = Action(start.key, Verb.create, "spec changed", 2, launch("-m", "http.server", "--bind", "127.0.0.1"))
    assert decide(edited, with_rules(), facts).approved
    audited = decide(start, with_rules(mode="audit"), facts)
    assert audited.approved and [reason.rule for reason in audited.audited] == [OBSERVED_RULE]


# -- observing (the host) -------------------------------------------------------------------

LISTENER = textwrap.dedent("""\
    import os, socket, sys, time
    family, address = (socket.AF_INET6, "::") if sys.argv[1] == "v6" else (socket.AF_INET, "0.0.0.0")
    sockets = [socket.create_server((address, 0), family=family), socket.socket(family, socket.SOCK_DGRAM)]
    sockets[1].bind((address, 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(("127.0.0.1", 9))  # a UDP socket with a peer takes nothing from others: not a listen
    print(os.getpid(), sockets[0].getsockname()[1], sockets[1].getsockname()[1], flush=True)
    time.sleep(600)
    """)


def test_the_socket_table_changes_when_a_process_starts_or_stops_listening_and_not_for_a_connection() -> None:
    """What lets the daemon's listen watch skip the costly socket-to-process mapping while nothing changed."""
    def listed(table: str, port: int) -> bool:  # /proc/net's local address of a 127.0.0.1 socket
        return any(entry[:2] == (table, f"0100007F:{port:04X}") for entry in listening_table())

    def port(sock: socket.socket) -> int:
        return sock.getsockname()[1]

    server = socket.create_server(("127.0.0.1", 0))
    assert listed("tcp", port(server))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected.connect(("127.0.0.1", 9))  # a UDP socket with a peer takes nothing from others: not a listen
    assert not listed("tcp", port(client)) and not listed("udp", port(connected))  # a connection is no listen
    peerless = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peerless.bind(("127.0.0.1", 0))
    assert listed("udp", port(peerless))
    ports = port(server), port(peerless)
    for each in (client, accepted, connected, peerless, server):
        each.close()
    assert not listed("tcp", ports[0]) and not listed("udp", ports[1])


def test_the_kernels_listeners_are_what_proc_net_lists() -> None:
    """sock_diag walks only the listeners; /proc/net/tcp walks every connection slot too (3.5 ms a table here)."""
    v6 = ipv6_works()
    servers = [socket.create_server(("127.0.0.1", 0))] + ([socket.create_server(("::1", 0), family=socket.AF_INET6)]
                                                          if v6 else [])
    datagrams = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagrams.bind(("127.0.0.1", 0))
    try:
        proc = {(table, fields[1], int(fields[7]), int(fields[9])) for table in ("tcp", "tcp6", "udp", "udp6")
                for fields in (line.split() for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:])
                if fields[3] == "0A" or (table.startswith("udp") and set(fields[2].split(":")[0]) == {"0"})}
        ports = {each.getsockname()[1] for each in (*servers, datagrams)}
        ours = [each for each in listeners() if each.port in ports]
        assert {(each.table, each.local, each.uid, each.inode) for each in ours} <= proc
        assert sorted((each.table, str(ipaddress.ip_address(each.address)), each.uid) for each in ours) == sorted(
            [("tcp", "127.0.0.1", os.geteuid()), ("udp", "127.0.0.1", os.geteuid())] + v6 * [("tcp6", "::1", os.geteuid())])
    finally:
        for each in (*servers, datagrams):
            each.close()


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="opening a socket as another user needs root")


@ROOT_ONLY
def test_the_socket_table_of_some_users_leaves_out_the_others_sockets() -> None:
    def listed(port: int, owners: frozenset[int] | None) -> bool:
        return any(entry[:2] == ("tcp", f"00000000:{port:04X}") for entry in listening_table(owners))

    shell, pid, tcp, _ = listener("exec {listener} v4", user=65534)
    try:
        assert listed(tcp, None) and listed(tcp, frozenset({65534, 12345}))
        assert not listed(tcp, frozenset({os.geteuid()}))
    finally:
        os.kill(pid, signal.SIGKILL)
        shell.wait()


@ROOT_ONLY
def test_the_listen_watch_looks_again_for_a_workloads_user_not_for_anothers(workspace: Workspace) -> None:
    """Another user's sockets changing (a browser's, a test suite's) made the idle daemon map every process's sockets
    every 3 s; a workload's own user opening one still does (it runs as a user of its own: no other can be it)."""
    workspace.write("app.yaml", workload_yaml("app"))
    reconciler = Reconciler(workspace.desired, workspace.state, on_exit=lambda name: None)
    reconciler.refresh()
    for key in reconciler.keys():
        reconciler.reconcile(key)
    record = reconciler.workloads.driver.native.observe("app").record
    assert record is not None and record.run_as is not None and record.run_as.uid not in (0, 65534)
    before = reconciler.workloads.listening_version()
    for user, changes in ((65534, False), (record.run_as.uid, True)):
        shell, pid, _, _ = listener("exec {listener} v4", user=user)
        try:
            assert (reconciler.workloads.listening_version() != before) is changes
        finally:
            os.kill(pid, signal.SIGKILL)
            shell.wait()
    reconciler.remove(ResourceKey("Workload", "app"), "test over")


@ROOT_ONLY
def test_a_full_read_maps_the_sockets_of_the_workloads_users_processes_alone_even_a_non_dumpable_ones() -> None:
    """The others cannot be theirs. Each process is judged by its credentials (/proc/PID/status), not by the owner
    of its /proc entries, which a process that makes itself non-dumpable hands to root."""
    undumpable = "import ctypes\nctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n" + LISTENER  # PR_SET_DUMPABLE: 0
    shell, pid, tcp, _ = listener(f"exec {PYTHON} -c '{undumpable}' v4", user=65534)
    try:
        assert os.stat(f"/proc/{pid}/fd").st_uid == 0
        seen = {str(listen) for listen in ListenObserver(lambda: frozenset({65534})).of(pid, {}).listening}
        assert f"0.0.0.0:{tcp}/tcp" in seen
        assert not ListenObserver(lambda: frozenset({12345})).of(pid, {}).listening  # not a workload's user
    finally:
        os.kill(pid, signal.SIGKILL)
        shell.wait()


def ipv6_works() -> bool:
    """Whether this host can bind IPv6 (CI containers may have it off)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def listener(shell_line: str, **options: object) -> tuple[subprocess.Popen[str], int, int, int]:
    """A shell running LISTENER as `shell_line` says; its pid and its TCP and UDP ports."""
    shell = subprocess.Popen(["/bin/sh", "-c", shell_line.format(listener=f"{PYTHON} -c '{LISTENER}'")],
                             stdout=subprocess.PIPE, text=True, **options)  # type: ignore[call-overload]
    pid, tcp, udp = map(int, shell.stdout.readline().split())  # type: ignore[union-attr]
    return shell, pid, tcp, udp


def test_the_sockets_of_a_whole_process_tree_are_seen_with_their_protocols() -> None:
    family, wildcard = ("v6", "[::]") if ipv6_works() else ("v4", "0.0.0.0")
    shell, pid, tcp, udp = listener(f"{{listener}} {family}; true")  # the listener is the shell's child, not the shell
    try:
        seen = ListenObserver().of(shell.pid, {})
        assert seen.pid == shell.pid
        assert [str(listen) for listen in seen.listening] == [f"{wildcard}:{port}/{protocol}" for port, protocol in
                                                               sorted([(tcp, "tcp"), (udp, "udp")])]
    finally:
        os.kill(pid, signal.SIGKILL)
        shell.wait()


def test_a_child_that_left_the_tree_is_found_by_the_launch_markers() -> None:
    env = dict(os.environ, MARK="launch-1")
    shell, pid, tcp, _ = listener("setsid {listener} v4 &", env=env)  # reparented: no longer below the shell
    try:
        shell.wait()
        observer = ListenObserver()
        assert f"0.0.0.0:{tcp}/tcp" not in map(str, observer.of(shell.pid, {"MARK": "launch-2"}).listening)
        assert f"0.0.0.0:{tcp}/tcp" in map(str, observer.of(shell.pid, {"MARK": "launch-1"}).listening)
    finally:
        os.kill(pid, signal.SIGKILL)


# -- the real daemon ------------------------------------------------------------------------


def http_server(name: str, bind: str, port: int, **spec: object) -> str:
    """`python3 -m http.server`, binding where its own args say, while its spec declares loopback."""
    return yaml.safe_dump({"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload", "metadata": {"name": name},
                           "spec": {"command": [PYTHON, "-m", "http.server"], "args": ["--bind", bind, str(port)],
                                    "host": "127.0.0.1", "port": port, **spec}}, sort_keys=False)


def listening_condition(workspace: Workspace, reason: str) -> dict[str, Any] | None:
    found = workspace.condition("web.yaml", "web", "Listening")
    return found if found and found["reason"] == reason else None


def test_a_server_seen_listening_beyond_loopback_is_stopped_and_stays_stopped(workspace: Workspace) -> None:
    port = free_port()
    workspace.write("web.yaml", http_server("web", "0.0.0.0", port))
    workspace.start_daemon("--resync", "600")  # the listen watch catches it, not a resync
    stopped = wait_for(lambda: listening_condition(workspace, "ExposureObserved"), 30, what="the exposed server stopped")
    assert stopped["message"].startswith(f"stopped: 0.0.0.0:{port}/tcp: pid ")
    assert workspace.condition("web.yaml", "web")["reason"] == "ExposureObserved"
    wait_for(lambda: not workspace.owned_processes("web"), 15, what="the server's processes gone")
    stop = [line for line in workspace.evidence("web.yaml") if line["event"] == "decision" and line["action"] == "stop"]
    assert stop[0]["cause"].startswith(f"stopped: seen listening where Policy/test-host does not allow: 0.0.0.0:{port}/tcp")
    observed = [line for line in workspace.evidence("web.yaml") if line["event"] == "exposure-observed"]
    assert [(line["listening"], line["result"]) for line in observed] == [([f"0.0.0.0:{port}/tcp"], "stopped")]
    assert f"0.0.0.0:{port}/tcp: pid {observed[0]['pid']} listens on 0.0.0.0 (every interface)" in observed[0]["reasons"][0]

    workspace.write("other.yaml", workload_yaml("other"))  # a pass over everything: the same launch is not started again
    # the stop itself already reads Denied (refused, not failed): wait for the refusal of the next start
    denied = wait_for(lambda: (status := workspace.resource_status("web.yaml", "web")) and status["phase"] == "Denied"
                      and "this launch's last run" in status["message"] and status, 30, what="the restart refused")
    assert workspace.condition("web.yaml", "web")["reason"] == "ExposureObserved"
    assert f"this launch's last run: 0.0.0.0:{port}/tcp: pid {observed[0]['pid']} was seen listening" in denied["message"]
    assert not workspace.owned_processes("web") and workspace.actions("web.yaml") == ["create", "stop"]

    workspace.write("policy.yaml", POLICY_YAML + f"  network:\n    exposed: [{{address: 0.0.0.0, ports: [{port}]}}]\n")
    wait_for(lambda: listening_condition(workspace, "ListenUndeclared"), 30, what="started again once exposure is allowed")
    status = workspace.resource_status("web.yaml", "web")
    assert status["listening"] == [f"0.0.0.0:{port}/tcp"] and status["phase"] == "Running"


def test_going_back_to_a_launch_seen_exposing_is_refused_while_the_fixed_one_keeps_serving(workspace: Workspace) -> None:
    port = free_port()
    workspace.write("web.yaml", http_server("web", "0.0.0.0", port))
    workspace.start_daemon("--resync", "1")
    wait_for(lambda: listening_condition(workspace, "ExposureObserved"), 30, what="the exposed server stopped")
    workspace.write("web.yaml", http_server("web", "127.0.0.1", port))
    wait_for(lambda: listening_condition(workspace, "AsDeclared"), 30, what="the fixed server running")
    serving = workspace.pid("web.yaml", "web")
    workspace.write("web.yaml", http_server("web", "0.0.0.0", port))  # back to the launch seen exposing
    ready = wait_for(lambda: (found := workspace.condition("web.yaml", "web")) and "the update is denied" in found["message"]
                     and found, 30, what="the update refused")
    assert ready["status"] == "True" and ready["reason"] != "ExposureObserved", ready  # Ready is about what serves
    assert "was seen listening" in ready["message"] and workspace.pid("web.yaml", "web") == serving


def test_a_compliant_server_shows_its_sockets_and_keeps_running(workspace: Workspace) -> None:
    port = free_port()
    workspace.write("web.yaml", http_server("web", "127.0.0.1", port))
    workspace.start_daemon("--resync", "1")
    wait_for(lambda: listening_condition(workspace, "AsDeclared"), 30, what="the server seen listening as declared")
    status = workspace.resource_status("web.yaml", "web")
    assert status["listening"] == [f"127.0.0.1:{port}/tcp"] and status["phase"] == "Running"
    wait_for(lambda: workspace.daemon_log.read_text().count("pass: resync") >= 3, 30, what="more passes")
    assert workspace.pid("web.yaml", "web") == status["pid"] and workspace.actions("web.yaml") == ["create"]


def test_audit_mode_records_an_observed_exposure_and_leaves_it_running(workspace: Workspace) -> None:
    port = free_port()
    workspace.write("policy.yaml", POLICY_YAML.replace("spec:\n", "spec:\n  mode: audit\n"))
    workspace.write("web.yaml", http_server("web", "0.0.0.0", port))
    workspace.start_daemon("--resync", "1")
    seen = wait_for(lambda: listening_condition(workspace, "ExposureObserved"), 30, what="the exposure recorded")
    assert "recorded, not stopped (audit mode)" in seen["message"] and f"0.0.0.0:{port}/tcp" in seen["message"]
    observed = [line for line in workspace.evidence("web.yaml") if line["event"] == "exposure-observed"]
    assert [line["result"] for line in observed] == ["recorded (audit mode)"]
    assert workspace.resource_status("web.yaml", "web")["phase"] == "Running" and workspace.actions("web.yaml") == ["create"]


def test_a_llama_cpp_server_whose_args_slip_a_wildcard_bind_is_caught(workspace: Workspace, tmp_path: Path) -> None:
    """`--hos` is argparse's prefix of --host: the engine's server reads it, whatever a guard on args knows of it."""
    pytest.importorskip("llama_cpp")
    from tests.tiny_gguf import write_tiny_llama

    model, port = tmp_path / "tiny.gguf", free_port()
    write_tiny_llama(model)
    args = ["--model", str(model), "--n_ctx", "128", "--host", "127.0.0.1", "--port", str(port), "--hos", "0.0.0.0"]
    workspace.write("web.yaml", yaml.safe_dump({
        "apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload", "metadata": {"name": "web"},
        "spec": {"command": [PYTHON, "-m", "llama_cpp.server"], "args": args, "host": "127.0.0.1", "port": port}}))
    workspace.start_daemon("--resync", "600")
    stopped = wait_for(lambda: listening_condition(workspace, "ExposureObserved"), 90,
                       what="the llama.cpp server stopped for its wildcard bind")
    assert stopped["message"].startswith(f"stopped: 0.0.0.0:{port}/tcp: pid ")
    assert workspace.condition("web.yaml", "web")["reason"] == "ExposureObserved"


# -- where sock_diag is refused or answers unlike itself -----------------------------------------


class _Refused:
    """socket.socket where netlink is refused (gVisor, seccomp, RestrictAddressFamilies=): every other family works."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __call__(self, family: int = -1, *args: Any, **kwargs: Any) -> Any:
        if family == socket.AF_NETLINK:
            raise PermissionError(1, "Operation not permitted")
        return self.real(family, *args, **kwargs)


class _Mangled:
    """A real sock_diag socket whose answers `mangle` rewrites on the way in, as a kernel unlike Linux's might."""

    def __init__(self, real: Any, mangle: Any) -> None:
        self.real, self.mangle = real, mangle

    def __call__(self, family: int = -1, *args: Any, **kwargs: Any) -> Any:
        made = self.real(family, *args, **kwargs)
        if family != socket.AF_NETLINK:
            return made
        mangle = self.mangle

        class Answering(self.real):  # type: ignore[name-defined,misc]
            def recv(self, size: int, *flags: int) -> bytes:
                return mangle(super().recv(size, *flags))

        return Answering(family, *args, fileno=made.detach(), **kwargs)


def found_by_all_readers(server: socket.socket) -> bool:
    port = server.getsockname()[1]
    in_table = any(entry[:2] == ("tcp", f"0100007F:{port:04X}") for entry in listening_table())
    in_tree = f"127.0.0.1:{port}/tcp" in map(str, ListenObserver().of(os.getpid(), {}).listening)
    return in_table and in_tree and any(each.port == port and each.table == "tcp" for each in listeners())


def test_where_netlink_is_refused_the_tcp_listeners_are_read_from_proc_net(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _Refused(socket.socket))
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert found_by_all_readers(server)


def test_a_sock_diag_message_longer_than_what_came_is_no_crash_but_a_read_of_proc_net(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def claim_more(data: bytes) -> bytes:  # the first message claims 64 KiB more than the answer holds
        return (int.from_bytes(data[:4], sys.byteorder) + 65536).to_bytes(4, sys.byteorder) + data[4:] if data else data

    monkeypatch.setattr(socket, "socket", _Mangled(socket.socket, claim_more))
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert found_by_all_readers(server)


def test_a_dump_the_kernel_marks_interrupted_is_asked_again_then_read_from_proc_net(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = []

    def interrupted(data: bytes) -> bytes:  # NLM_F_DUMP_INTR on the first message of each answer
        answers.append(data)
        return data[:6] + (int.from_bytes(data[6:8], sys.byteorder) | 0x10).to_bytes(2, sys.byteorder) + data[8:]

    monkeypatch.setattr(socket, "socket", _Mangled(socket.socket, interrupted))
    with socket.create_server(("127.0.0.1", 0)) as server:
        before = len(answers)
        assert any(each.port == server.getsockname()[1] for each in listeners())
        assert len(answers) - before >= 4  # two families, asked twice


ESCAPEE = textwrap.dedent("""\
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:  # reparented, out of the session and without the launch's markers in its environment
            code = "import socket, time\\ns = socket.create_server(('0.0.0.0', int(__import__('sys').argv[1])))\\ntime.sleep(600)"
            os.execve(sys.executable, [sys.executable, "-c", code, sys.argv[1], "escapee"], {})
        os._exit(0)
    time.sleep(600)
    """)


@ROOT_ONLY
def test_a_dynamic_users_listener_that_escaped_tree_and_markers_is_still_the_workloads(workspace: Workspace) -> None:
    """A dynamic user is the workload's alone: every socket it creates is the workload's, whichever process holds it
    (a double-forked child with an empty environment, or a thread that unshared its descriptor table)."""
    port = free_port()
    workspace.write("web.yaml", workload_yaml("web", ESCAPEE, (str(port),), host="127.0.0.1", port=port))
    workspace.start_daemon("--resync", "600")
    try:
        stopped = wait_for(lambda: listening_condition(workspace, "ExposureObserved"), 30, what="the escapee caught")
        assert stopped["message"].startswith(f"stopped: 0.0.0.0:{port}/tcp: pid ")
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if process.info["cmdline"] and process.info["cmdline"][-2:] == [str(port), "escapee"]:
                process.kill()


@ROOT_ONLY
def test_a_new_run_of_a_dynamic_user_is_not_given_the_sockets_a_read_before_it_saw() -> None:
    """A read serves 3 s; one taken before the run started still lists the sockets of its user's previous run."""
    observer = ListenObserver(lambda: frozenset({65534}))
    shell, pid, tcp, _ = listener("exec {listener} v4", user=65534)
    assert f"0.0.0.0:{tcp}/tcp" in map(str, observer.of(pid, {}, own_user=65534).listening)
    os.kill(pid, signal.SIGKILL)
    shell.wait()
    after = subprocess.Popen(["sleep", "30"], user=65534)
    try:
        assert observer.of(after.pid, {}, own_user=65534).listening == ()
    finally:
        after.kill()
        after.wait()
