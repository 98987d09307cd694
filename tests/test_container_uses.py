"""Containers reach the gateway through the bridge, and only the ones that declared they use it: real daemon, real
gateway, busybox containers on the real (private) engine calling http://host.docker.internal:PORT/v1."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Workspace, wait_for
from tests.docker_engine import TEST_IMAGE, EngineUnderTest
from tests.test_containers import free_port, the_container
from tests.test_engines import document

pytestmark = pytest.mark.usefixtures("docker_engine")
SLEEP = ["sleep", "3600"]


def policy(*, trusted: list[str], local_containers: bool = True) -> str:
    return document("Policy", "test-host", {
        "native": {"trustedEngines": trusted}, "containers": {"images": ["reconciler-test/*"], "networks": ["bridge"]},
        "network": {"localContainers": local_containers}})


def container(name: str, **spec: Any) -> str:
    return document("Workload", name, {"runtime": "container", "image": TEST_IMAGE, "command": SLEEP,
                                       "network": "bridge", **spec})


def wget(engine: EngineUnderTest, space: Workspace, name: str, url: str, post: dict[str, Any] | None = None) -> str:
    """What busybox wget prints, run inside the container: the body on success, 'server returned error: ...' else.
    (No -T: this busybox's wget crashes with it.)"""
    post_args = ["--header", "Content-Type: application/json", "--post-data", json.dumps(post)] if post else []
    _, (out, err) = the_container(engine, space, name).exec_run(["wget", "-q", "-O-", *post_args, url], demux=True)
    return (out or err or b"").decode(errors="replace")


def running(space: Workspace, file: str, name: str) -> dict[str, Any]:
    return wait_for(lambda: (s := space.resource_status(file, name)) and s["phase"] == "Running" and s,
                    timeout=90, what=f"{name} to be Running")


def test_a_container_that_declared_the_use_reaches_the_gateway_and_others_get_403(
        workspace: Workspace, docker_engine: EngineUnderTest) -> None:
    space, port = workspace, free_port()
    space.write("policy.yaml", policy(trusted=[]))  # the gateway is refused at first: its user must wait
    space.write("models.yaml", document("Model", "tiny", {"source": "models/tiny.gguf"}) + "---\n"
                + document("Model", "other", {"source": "models/other.gguf"}))
    space.write("gateway.yaml", document("Workload", "gateway", {
        "engine": "gateway", "port": port, "args": ["--wait-seconds", "0"],
        "health": {"http": {"path": "/health"}, "periodSeconds": 0.5}}))
    space.write("caller.yaml", container("caller", uses=[{"workload": "gateway", "env": "GATEWAY_URL", "path": "/v1"}]))
    space.write("limited.yaml", container("limited", uses=[
        {"workload": "gateway", "env": "OPENAI_API_BASE_URL", "path": "/v1", "models": ["tiny"]}]))
    space.write("stranger.yaml", container("stranger"))
    space.start_daemon()

    waiting = wait_for(lambda: (c := space.condition("caller.yaml", "caller")) and c["reason"] == "WaitingForDependencies"
                       and c, timeout=60, what="caller to wait for the gateway")
    assert "Workload/gateway (PolicyDenied" in waiting["message"], waiting
    running(space, "stranger.yaml", "stranger")
    assert space.resource_status("caller.yaml", "caller").get("pid") is None, "started before what it uses was Ready"

    space.write("policy.yaml", policy(trusted=["gateway"]))
    gateway = running(space, "gateway.yaml", "gateway")
    caller = running(space, "caller.yaml", "caller")
    running(space, "limited.yaml", "limited")
    env = the_container(docker_engine, space, "caller").attrs["Config"]["Env"]
    assert f"GATEWAY_URL=http://host.docker.internal:{port}/v1" in env
    assert "host.docker.internal:host-gateway" in the_container(docker_engine, space, "caller").attrs["HostConfig"]["ExtraHosts"]
    bridge = next(arg for arg in zip(gateway["command"], gateway["command"][1:]) if arg[0] == "--container-host")[1]
    listening = wait_for(lambda: (c := space.condition("gateway.yaml", "gateway", "Listening"))
                         and c["reason"] not in ("NotListening", "Unknown") and c, timeout=30, what="the gateway's sockets")
    assert listening["reason"] == "AsDeclared" and f"{bridge}:{port}" in listening["message"], \
        f"the bridge-address socket is the declared exposure, not an undeclared one: {listening}"

    wait_for(lambda: caller["addresses"][0] in json.loads((space.state / "gateway" / "routes.json").read_text())["clients"],
             timeout=30, what="the caller's address in the gateway's routes")
    listed = json.loads(wget(docker_engine, space, "caller", f"http://host.docker.internal:{port}/v1/models"))
    assert [model["id"] for model in listed["data"]] == ["other", "tiny"]
    refused = wget(docker_engine, space, "stranger", f"http://{bridge}:{port}/v1/models")
    assert "403" in refused and "data" not in refused, refused

    wait_for(lambda: len(json.loads((space.state / "gateway" / "routes.json").read_text())["clients"]) == 2,
             timeout=30, what="the limited container's address in the gateway's routes")
    listed = json.loads(wget(docker_engine, space, "limited", f"http://host.docker.internal:{port}/v1/models"))
    assert [model["id"] for model in listed["data"]] == ["tiny"], "a container is listed the models it may use"
    asked = {"prompt": "hi", "max_tokens": 1}
    assert "503" in wget(docker_engine, space, "limited", f"http://host.docker.internal:{port}/v1/completions",
                         {"model": "tiny", **asked}), "its model passes admission (and has no workload)"
    assert "403" in wget(docker_engine, space, "limited", f"http://host.docker.internal:{port}/v1/completions",
                         {"model": "other", **asked})

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as answer:
        assert answer.status == 200, "loopback clients are served as before"

    space.stop_daemon()  # a daemon that cannot reach the engine keeps the gateway (and its streams) as it runs
    space.start_daemon(env={**os.environ, "DOCKER_HOST": f"unix://{space.state}/no-engine.sock"})
    wait_for(lambda: "EngineUnavailable" in (space.desired / "caller.status.yaml").read_text()
             or "cannot be observed" in (space.desired / "caller.status.yaml").read_text(),
             timeout=30, what="the daemon to find the engine away")
    time.sleep(2)  # passes of the gateway meanwhile
    assert running(space, "gateway.yaml", "gateway")["pid"] == gateway["pid"], "restarted while the engine was away"


def test_without_the_policy_the_gateway_does_not_listen_on_the_bridge(
        workspace: Workspace, docker_engine: EngineUnderTest) -> None:
    space, port = workspace, free_port()
    space.write("policy.yaml", policy(trusted=["gateway"], local_containers=False))
    space.write("gateway.yaml", document("Workload", "gateway", {"engine": "gateway", "port": port}))
    space.write("caller.yaml", container("caller", uses=[{"workload": "gateway", "env": "GATEWAY_URL"}]))
    space.cli("apply")
    refused = space.condition("gateway.yaml", "gateway")
    assert refused["reason"] == "PolicyDenied" and "spec.network.localContainers: true" in refused["message"], refused
    waiting = space.condition("caller.yaml", "caller")
    assert waiting["reason"] == "WaitingForDependencies" and "Workload/gateway (PolicyDenied" in waiting["message"]
    shown = space.cli("status", "-o", "json").stdout
    assert "Workload/gateway (PolicyDenied" in shown, "a read-only status judges what the caller waits for, too"


def test_the_shipped_webui_talks_to_chat_through_the_gateway(workspace: Workspace, docker_engine: EngineUnderTest) -> None:
    """desired-state/ as shipped (policy, chat, gateway, webui), with what this machine lacks stood in for: the tiny
    GGUF as the chat model, the busybox image as Open WebUI (allowed by the policy beside it), free ports, no volume."""
    pytest.importorskip("llama_cpp")
    from tests.tiny_gguf import write_tiny_llama

    shipped = Path(__file__).resolve().parent.parent / "desired-state"
    chat_port, gateway_port, webui_port = free_port(), free_port(), free_port()
    for name in ("policy.yaml", "chat.yaml", "gateway.yaml", "webui.yaml"):
        documents = list(yaml.safe_load_all((shipped / name).read_text()))
        for document_ in documents:
            spec = document_["spec"]
            if document_["kind"] == "Policy":
                spec["containers"]["images"].append("reconciler-test/*")
            elif document_["metadata"]["name"] == "chat":
                spec["port"] = chat_port
            elif document_["metadata"]["name"] == "gateway":
                spec["port"] = gateway_port
            elif document_["metadata"]["name"] == "webui":
                spec |= {"image": TEST_IMAGE, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                         "ports": [{"containerPort": 8080, "hostPort": webui_port}]}
                spec.pop("volumes")
        workspace.write(name, yaml.safe_dump_all(documents, sort_keys=False))
    write_tiny_llama(workspace.desired / "models" / "chat.gguf")
    workspace.start_daemon()
    running(workspace, "chat.yaml", "chat")
    asking = wait_for(lambda: (c := workspace.condition("webui.yaml", "webui")) and c["reason"] == "PendingApproval" and c,
                      timeout=60, what="the web UI's approval request (the shipped policy asks for Privilege)")
    spec_hash = re.search(r"--spec-hash (\w+)", asking["message"]).group(1)
    assert workspace.cli("approve", "webui", "--spec-hash", spec_hash).returncode == 0
    running(workspace, "webui.yaml", "webui")
    env = dict(line.split("=", 1) for line in the_container(docker_engine, workspace, "webui").attrs["Config"]["Env"])
    base = env["OPENAI_API_BASE_URL"]
    assert base == f"http://host.docker.internal:{gateway_port}/v1"
    wait_for(lambda: json.loads((workspace.state / "gateway" / "routes.json").read_text())["clients"],
             timeout=30, what="the web UI's address in the gateway's routes")
    asked = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answer = json.loads(wget(docker_engine, workspace, "webui", f"{base}/chat/completions", asked))
    assert answer["model"] == "chat-model" and answer["choices"][0]["message"]["role"] == "assistant", answer
