"""The container runtime on a real Docker engine: least privilege, loopback ports, ownership by label,
no-op passes, drift repair, adoption, an engine that goes away and comes back, and bad input."""

from __future__ import annotations

import json
import signal
import socket
import textwrap
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.drive.process import owner_id
from reconciler.observe.docker_engine import OWNER_LABEL, WORKLOAD_LABEL
from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.docker_engine import TEST_IMAGE, EngineUnderTest, import_image

pytestmark = pytest.mark.usefixtures("docker_engine")
HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/www"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def container_yaml(name: str, **spec: Any) -> str:
    body = {"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload", "metadata": {"name": name},
            "spec": {"runtime": "container", "image": TEST_IMAGE, **spec}}
    return yaml.safe_dump(body, sort_keys=False)


def policy_yaml(**containers: Any) -> str:
    rules = {"images": ["reconciler-test/*"], "networks": ["bridge"], **containers}
    body = {"apiVersion": "localaistack.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "test-host"},
            "spec": {"native": {"trustedExecutables": [{"executable": PYTHON}]}, "containers": rules}}
    return yaml.safe_dump(body, sort_keys=False)


def web(name: str, port: int, **spec: Any) -> str:
    return container_yaml(name, command=HTTPD, ports=[{"containerPort": 8080, "hostPort": port}],
                          health={"http": {"path": "/health"}, "periodSeconds": 1}, **spec)


@pytest.fixture
def space(workspace: Workspace) -> Workspace:
    workspace.write("policy.yaml", policy_yaml())
    return workspace


def ours(engine: EngineUnderTest, space: Workspace, name: str | None = None) -> list:
    labels = [f"{OWNER_LABEL}={owner_id(space.state)}"] + ([f"{WORKLOAD_LABEL}={name}"] if name else [])
    return engine.client().containers.list(all=True, filters={"label": labels})


def the_container(engine: EngineUnderTest, space: Workspace, name: str):
    found = ours(engine, space, name)
    assert len(found) == 1, f"expected one container for {name}, found {[c.name for c in found]}"
    return found[0]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


# -- create, health, least privilege ------------------------------------------------------------------------------


def test_container_runs_healthy_on_loopback_with_least_privilege(space: Workspace, docker_engine: EngineUnderTest) -> None:
    port = free_port()
    space.write("web.yaml", web("web", port, resources={"memory": "64Mi", "cpus": 0.5}))
    done = space.cli("apply", "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    status = space.resource_status("web.yaml", "web")
    assert status["phase"] == "Running" and status["conditions"][-1]["reason"] == "Healthy", status
    assert status["endpoints"] == [f"http://127.0.0.1:{port}"]
    assert get(f"http://127.0.0.1:{port}/") == "hello from a container\n"

    container = the_container(docker_engine, space, "web")
    assert status["containerId"] == container.id and status["image"] == TEST_IMAGE
    assert status["imageId"] == docker_engine.client().images.get(TEST_IMAGE).id
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["NetworkMode"] == "bridge" and host["PidMode"] == "" and host["IpcMode"] in ("private", "")
    assert host["PidsLimit"] == 512 and host["Memory"] == 64 * 1024**2 and host["NanoCpus"] == 500_000_000
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert not host["DeviceRequests"]  # no GPU unless asked for
    assert container.attrs["Config"]["User"] == "65534:65534"
    assert "/tmp" in host["Tmpfs"]
    uid = container.exec_run(["id", "-u"]).output.decode().strip()
    assert uid == "65534"
    assert container.exec_run(["touch", "/etc/x"]).exit_code != 0  # read-only root filesystem
    assert container.exec_run(["touch", "/tmp/x"]).exit_code == 0
    effective = container.exec_run(["cat", "/proc/1/status"]).output.decode()
    assert "CapEff:\t0000000000000000" in effective
    labels = container.labels
    assert labels[OWNER_LABEL] == owner_id(space.state) and labels["dev.localaistack.generation"] == "1"
    assert len(labels["dev.localaistack.config-hash"]) == 64


def test_a_pass_with_nothing_to_do_makes_no_engine_writes(space: Workspace, docker_engine: EngineUnderTest) -> None:
    space.write("web.yaml", web("web", free_port()))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    first = the_container(docker_engine, space, "web").id
    since = datetime.now(timezone.utc)
    time.sleep(1.1)  # the engine's event times have one-second resolution in filters
    again = space.cli("apply", "--wait", "--timeout", "60")
    assert again.returncode == 0, again.stderr
    until = datetime.now(timezone.utc)
    events = list(docker_engine.client().events(
        since=since, until=until, decode=True, filters={"label": [f"{OWNER_LABEL}={owner_id(space.state)}"]}))
    assert events == []
    assert the_container(docker_engine, space, "web").id == first
    assert space.actions("web.yaml").count("create") == 1


def test_spec_change_recreates_with_a_new_config_hash_and_says_why(space: Workspace, docker_engine: EngineUnderTest) -> None:
    port = free_port()
    space.write("web.yaml", web("web", port))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    before = the_container(docker_engine, space, "web")
    space.write("web.yaml", web("web", port, env={"GREETING": "hi"}))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    after = the_container(docker_engine, space, "web")
    assert after.id != before.id
    assert after.labels["dev.localaistack.config-hash"] != before.labels["dev.localaistack.config-hash"]
    assert after.labels["dev.localaistack.generation"] == "2"
    assert "GREETING=hi" in after.attrs["Config"]["Env"]
    recreate = [event for event in space.evidence("web.yaml") if event.get("action") == "recreate"]
    assert recreate and "spec.env" in recreate[0]["cause"], recreate
