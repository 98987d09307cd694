"""Hostile desired state, all of it written at once under a running daemon with a workload already running: each
document is refused with a reason that says what and where (a load error with file and line, or the gate's rule),
nothing of it runs, no shell ever interprets an argument, the daemon stays up and the running workload is not
touched."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml
from gguf.constants import GGUFValueType

from reconciler.drive.process import NAME_VARIABLE
from reconciler.observe.docker_engine import WORKLOAD_LABEL
from tests import crafted_gguf as crafted
from tests.conftest import PYTHON, SLEEPER, Workspace, wait_for, workload_yaml
from tests.docker_engine import EngineUnderTest
from tests.faults.conftest import Ledger
from tests.test_containers import container_yaml, free_port, ours, policy_yaml
from tests.test_policy_gate import _fallback_workload

HEADER = "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\n"
ARGV_PRINTER = "import sys; print('argv', sys.argv[1:], flush=True)"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdef", "bcdefg"))


@dataclass(frozen=True)
class Hostile:
    category: str
    file: str
    text: str
    expected: str  # in the file's load errors, or in its resource's status message
    name: str | None = None  # the resource it declares, when it is one (it must not run)


def model(name: str, **spec: object) -> str:
    return yaml.safe_dump({"apiVersion": "localaistack.dev/v1alpha1", "kind": "Model", "metadata": {"name": name},
                           "spec": spec}, sort_keys=False)


def native(name: str, command: list[str] | None = None, **spec: object) -> str:
    return yaml.safe_dump({"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload", "metadata": {"name": name},
                           "spec": {"command": command or [PYTHON, "-c", SLEEPER], **spec}}, sort_keys=False)


def cases(tmp: Path, taken_port: int) -> list[Hostile]:
    evil = tmp / "evil-bin"
    allowed, outside = tmp / "volumes", tmp / "volumes" / "etc"
    python = Path(PYTHON).name
    return [
        Hostile("malformed YAML", "tag.yaml", HEADER + "metadata: {name: tagged}\nspec:\n  command: "
                "!!python/object/apply:os.system [\"touch " + str(tmp / "pwned") + "\"]\n",
                "YAML tag !!python/object/apply:os.system is not allowed"),
        Hostile("malformed YAML", "bomb.yaml", BOMB, "an alias bomb?"),
        Hostile("malformed YAML", "dup.yaml", HEADER + "metadata: {name: dup}\nspec:\n  command: [a]\n  command: [b]\n",
                "duplicate key 'command' (first at line 5)"),
        Hostile("malformed YAML", "binary.yaml", "kind: Workload\nname: \udcff\n", "not UTF-8 text: byte 0xff"),
        Hostile("names that are not DNS labels", "traversal-name.yaml", native("../../etc"),
                "metadata.name: expected a DNS-1123 label"),
        Hostile("names that are not DNS labels", "upper-name.yaml", native("Evil_Name"),
                "metadata.name: expected a DNS-1123 label"),
        Hostile("env injecting code into a trusted program", "preload.yaml",
                native("preload", env={"LD_PRELOAD": str(tmp / "evil.so")}), "native.loaderEnvironment: env LD_PRELOAD",
                "preload"),
        Hostile("env injecting code into a trusted program", "pythonpath.yaml",
                native("pythonpath", env={"PYTHONPATH": str(evil)}), "native.loaderEnvironment: env PYTHONPATH",
                "pythonpath"),
        Hostile("env injecting code into a trusted program", "java-agent.yaml",
                native("java-agent", env={"JAVA_TOOL_OPTIONS": f"-javaagent:{tmp / 'evil.jar'}"}),
                "native.loaderEnvironment: env JAVA_TOOL_OPTIONS", "java-agent"),
        Hostile("env injecting code into a trusted program", "openssl-conf.yaml",
                native("openssl-conf", env={"OPENSSL_CONF": str(tmp / "evil.cnf")}),
                "native.loaderEnvironment: env OPENSSL_CONF", "openssl-conf"),
        Hostile("env injecting code into a trusted program", "path.yaml",
                native("path-hijack", [python, "-c", SLEEPER], env={"PATH": str(evil)}),
                f"{evil / python}", "path-hijack"),
        Hostile("untrusted executables", "shell.yaml", native("shell", ["/bin/sh", "-c", "sleep 600"]),
                "native executable '/bin/sh'", "shell"),
        Hostile("binds beyond loopback, system ports, taken ports", "any-v4.yaml",
                native("any-v4", host="0.0.0.0", port=free_port()), "network.exposed: the server would listen on "
                "0.0.0.0 (every interface)", "any-v4"),
        Hostile("binds beyond loopback, system ports, taken ports", "any-v6.yaml",
                native("any-v6", host="::", port=free_port()), "network.exposed: the server would listen on :: "
                "(every interface)", "any-v6"),
        Hostile("binds beyond loopback, system ports, taken ports", "low-port.yaml",
                native("low-port", host="127.0.0.1", port=79), "network.privilegedPorts: the server would listen on "
                "port 79", "low-port"),
        Hostile("binds beyond loopback, system ports, taken ports", "taken.yaml",
                native("taken", host="127.0.0.1", port=taken_port), f"127.0.0.1:{taken_port} is already in use",
                "taken"),
        Hostile("privileged containers", "privileged.yaml",
                container_yaml("privileged", command=["sleep", "600"]).replace("spec:\n", "spec:\n  privileged: true\n"
                                                                                "  pidMode: host\n  devices: [/dev/sda]\n"),
                "spec.privileged: unknown field 'privileged'"),
        Hostile("privileged containers", "caps.yaml", container_yaml("caps", command=["sleep", "600"],
                                                                      security={"capabilities": ["SYS_ADMIN"]}),
                "containers.capabilities: capabilities SYS_ADMIN are not allowed", "caps"),
        Hostile("privileged containers", "host-net.yaml", container_yaml("host-net", command=["sleep", "600"],
                                                                          network="host"),
                "containers.hostNetwork", "host-net"),
        Hostile("privileged containers", "root.yaml", container_yaml("root", command=["sleep", "600"],
                                                                      security={"user": "0:0"}),
                "containers.root: running as 0:0", "root"),
        Hostile("volume sources outside the allowed roots (symlinks included)", "volume-up.yaml",
                container_yaml("volume-up", command=["sleep", "600"],
                               volumes=[{"source": str(allowed / ".." / ".." / ".."), "target": "/host"}]),
                "containers.volumeRoots: volume source /", "volume-up"),
        Hostile("volume sources outside the allowed roots (symlinks included)", "volume-link.yaml",
                container_yaml("volume-link", command=["sleep", "600"], volumes=[{"source": str(outside),
                                                                                   "target": "/host-etc"}]),
                "containers.volumeRoots: volume source /etc lies outside", "volume-link"),
        Hostile("model files outside the allowed roots (.., symlinks, file://)", "model-up.yaml",
                model("model-up", source="../" * 12 + "etc/shadow", format="gguf"),
                "resolves to /etc/shadow, outside the folders models are read from"),
        Hostile("model files outside the allowed roots (.., symlinks, file://)", "model-link.yaml",
                model("model-link", source="models/passwd.gguf"), "resolves to /etc/passwd, outside the folders"),
        Hostile("model files outside the allowed roots (.., symlinks, file://)", "model-url.yaml",
                model("model-url", source="file:///etc/shadow", sha256="1" * 64),
                "file:///etc/shadow resolves to /etc/shadow, outside the folders"),
        Hostile("crafted GGUF headers (arrays nested 5,000 deep, a string alignment)", "crafted.yaml",
                model("crafted", variants=[{"name": "deep", "source": "models/deep.gguf"},
                                           {"name": "aligned", "source": "models/aligned.gguf"}]),
                "models/deep.gguf is not a GGUF model: arrays are nested more than 8 deep"),
        Hostile("model sources that block or reach inside (a FIFO, a loopback service)", "model-fifo.yaml",
                model("model-fifo", source="models/pipe.gguf", format="gguf"), "is a FIFO, not a regular file"),
        Hostile("model sources that block or reach inside (a FIFO, a loopback service)", "model-internal.yaml",
                model("model-internal", source=f"http://127.0.0.1:{taken_port}/admin", sha256="2" * 64),
                "127.0.0.1 resolves to 127.0.0.1, a non-public address"),
        Hostile("hosted fallback without consent", "hosted.yaml", _fallback_workload(), "ProviderNotAllowed", "chat"),
    ]


def refusal(workspace: Workspace, case: Hostile) -> str:
    """What the reconciler said about the file: its load errors, or its resource's message and conditions."""
    report = workspace.status(case.file) or {}
    said = list(report.get("errors") or [])
    for resource in report.get("resources") or []:
        said += [resource.get("message", ""), *(f"{c.get('reason')}: {c.get('message')}" for c in
                                                resource.get("conditions", []))]
    return "\n".join(said)


def test_hostile_documents_are_refused_with_reasons_and_touch_nothing_that_runs(
        workspace: Workspace, docker_engine: EngineUnderTest, ledger: Ledger, tmp_path: Path) -> None:
    evil = tmp_path / "evil-bin"
    evil.mkdir()
    (evil / Path(PYTHON).name).write_text(f"#!/bin/sh\ntouch {tmp_path / 'hijacked'}\n")
    (evil / Path(PYTHON).name).chmod(0o755)
    (tmp_path / "volumes").mkdir()
    (tmp_path / "volumes" / "etc").symlink_to("/etc")
    listener = socket.create_server(("127.0.0.1", 0))
    hostile = cases(tmp_path, listener.getsockname()[1])
    markers = [tmp_path / name for name in ("pwned", "hijacked", "m1", "m2", "m3", "m4")]
    shell_args = [f"; touch {markers[2]}", f"$(touch {markers[3]})", f"`touch {markers[4]}`", f"| touch {markers[5]}"]

    (workspace.desired / "models").mkdir()
    (workspace.desired / "models" / "passwd.gguf").symlink_to("/etc/passwd")
    deep = crafted.entry("x", GGUFValueType.ARRAY, crafted.nested(5000))
    (workspace.desired / "models" / "deep.gguf").write_bytes(crafted.header([*crafted.llama(), deep]))
    (workspace.desired / "models" / "aligned.gguf").write_bytes(
        crafted.header([*crafted.llama(), crafted.text("general.alignment", "32")]))
    os.mkfifo(workspace.desired / "models" / "pipe.gguf")  # nothing ever writes to it: a reader would wait for good
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "allowed.gguf").write_bytes(b"GGUF")  # outside the folder, in a root the policy lists
    workspace.write("policy.yaml", policy_yaml(volumeRoots=[str(tmp_path / "volumes")]).replace(
        "spec:\n", f"spec:\n  models:\n    roots: [{tmp_path / 'store'}]\n", 1))
    workspace.write("steady.yaml", workload_yaml("steady"))
    workspace.start_daemon("--resync", "2")
    steady = wait_for(lambda: workspace.pid("steady.yaml", "steady"), 30, what="the steady workload")
    with listener:
        for case in hostile:
            (workspace.desired / case.file).write_text(case.text, errors="surrogateescape")
        workspace.write("allowed.yaml", model("allowed", source=str(tmp_path / "store" / "allowed.gguf"), format="gguf"))
        workspace.write("argv.yaml", workload_yaml("argv", ARGV_PRINTER, tuple(shell_args), restart={"policy": "Never"}))
        for case in hostile:
            wait_for(lambda: case.expected in refusal(workspace, case), 60, what=f"{case.file} refused: {case.expected}")
        argv_log = workspace.state / "logs" / "argv.log"
        wait_for(lambda: argv_log.exists() and "argv" in argv_log.read_text(), 30, what="the argv printer's output")

    names = {case.name for case in hostile if case.name}
    running = {process.environ().get(NAME_VARIABLE) for process in workspace.owned_processes()}
    containers = {container.labels.get(WORKLOAD_LABEL) for container in ours(docker_engine, workspace)}
    for case in hostile:
        row = ledger.row(f"hostile input: {case.category}", "refused with its reason (file:line for load errors, "
                         "the rule for the gate); nothing of it runs; daemon up; the running workload untouched")
        row.runs += 1
        row.passed += case.expected in refusal(workspace, case) and case.name not in running | containers
    assert not names & (running | containers), f"hostile workloads run: {names & (running | containers)}"
    assert str(shell_args) in argv_log.read_text(), "arguments reached the program changed"
    assert not [marker for marker in markers if marker.exists()], "a shell or a hijacked program ran"
    assert workspace.pid("steady.yaml", "steady") == steady and workspace._daemon.poll() is None
    said = "".join(path.read_text() for suffix in ("status", "decisions") for path in workspace.desired.glob(f"*.{suffix}.yaml"))
    leaked = [line for line in said.splitlines() if any(sign in line for sign in ("root:x:", "b'root", "72 6f 6f 74"))]
    assert not leaked, f"bytes of /etc/passwd or /etc/shadow reached a status file: {leaked}"
    wait_for(lambda: (workspace.resource_status("allowed.yaml", "allowed") or {}).get("phase") == "Available", 30,
             what="the model in a folder the policy lists Available")
    row = ledger.row("hostile input: shell metacharacters in args", "passed to the program verbatim, no shell: "
                     "no marker file created")
    row.runs += 1
    row.passed += str(shell_args) in argv_log.read_text() and not any(marker.exists() for marker in markers)
