"""The container runtime on a real Docker engine: least privilege, loopback ports, ownership by label,
no-op passes, drift repair, adoption, an engine that goes away and comes back, and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.drive.process import owner_id
from reconciler.observe.docker_engine import OWNER_LABEL, WORKLOAD_LABEL, DockerEngine
from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.docker_engine import TEST_IMAGE, EngineUnderTest, import_image
from tests.engine_proxy import CountingProxy

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
    assert not host["DeviceRequests"] and host["Runtime"] == "runc"  # no GPU unless asked for, whatever the default
    assert "NVIDIA_VISIBLE_DEVICES=void" in container.attrs["Config"]["Env"]
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
    described = space.cli("describe", "web").stdout
    assert f"Container:   {container.id[:12]}" in described and f"Image:       {TEST_IMAGE} (sha256:" in described
    assert "memory 64Mi" in described and f"ports 127.0.0.1:{port}->8080/tcp" in described
    assert len(labels["dev.localaistack.config-hash"]) == 64


def test_one_container_port_published_on_two_addresses_gets_both(space: Workspace, docker_engine: EngineUnderTest) -> None:
    first, second = free_port(), free_port()
    space.write("web.yaml", container_yaml("web", command=HTTPD, ports=[
        {"containerPort": 8080, "hostPort": first}, {"containerPort": 8080, "hostPort": second, "hostIP": "127.0.0.2"}]))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    bindings = the_container(docker_engine, space, "web").attrs["HostConfig"]["PortBindings"]["8080/tcp"]
    assert sorted((b["HostIp"], b["HostPort"]) for b in bindings) == [("127.0.0.1", str(first)), ("127.0.0.2", str(second))]
    wait_for(lambda: get(f"http://127.0.0.2:{second}/") == "hello from a container\n", 10, what="the second binding")


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


def counted(space: Workspace, engine: EngineUnderTest, socket_path: Path, *args: str) -> tuple[Any, dict[str, int]]:
    """`reconciler ARGS` with the engine reached through a counting proxy: its result and its engine calls."""
    proxy = CountingProxy(socket_path, engine.address.removeprefix("unix://"))
    proxy.start()
    try:
        return space.cli(*args, env={**os.environ, "DOCKER_HOST": proxy.address}), dict(proxy.counts)
    finally:
        proxy.close()


def test_a_no_op_apply_and_a_status_list_once_and_inspect_each_container_once(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the counting proxy stands on a unix socket")
    names = ("one", "two", "three")
    for name in names:
        space.write(f"{name}.yaml", container_yaml(name, command=HTTPD, ports=[{"containerPort": 8080, "hostPort": free_port()}]))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    again, calls = counted(space, docker_engine, tmp_path / "apply.sock", "apply")
    assert again.returncode == 0, again.stderr
    # it looked at each workload twice (its seed, its reconcile): the engine was asked once
    assert calls.get("GET /containers/{}/json") == len(names), calls
    # listings: the seed's keys (before the event subscription), its first look after it; adopting and the pass's
    # keys read that listing and the events since (one listed twice more, 50 ms after)
    assert calls.get("GET /containers/json", 0) <= 2, calls
    assert [endpoint for endpoint in calls if not endpoint.startswith("GET ")] == [], calls
    # the engine SDK asks the API version on connecting; the host profile's engine release is read from that answer
    assert calls.get("GET /version") == 1, calls
    assert [c.status for c in ours(docker_engine, space)] == ["running"] * len(names)
    shown, calls = counted(space, docker_engine, tmp_path / "status.sock", "status")
    assert shown.returncode == 0 and shown.stdout.count("Running") == len(names), shown.stdout + shown.stderr
    # status reads one moment: one listing, one inspection per container, however many times it looks at each
    assert calls.get("GET /containers/{}/json") == len(names), calls
    assert calls.get("GET /containers/json", 0) <= 2, calls


def test_the_engine_release_read_on_connecting_is_news_once(docker_engine: EngineUnderTest, tmp_path: Path) -> None:
    """The connection's own GET /version answers the first question of the engine's release; a later one asks the
    engine again (it may have been upgraded under a kept connection)."""
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the counting proxy stands on a unix socket")
    proxy = CountingProxy(tmp_path / "engine.sock", docker_engine.address.removeprefix("unix://"))
    proxy.start()
    try:
        engine = DockerEngine(proxy.address)
        release = docker_engine.client().version()["Version"]
        assert engine.version() == release and proxy.counts["GET /version"] == 1
        assert engine.version() == release and proxy.counts["GET /version"] == 2
    finally:
        proxy.close()


def test_the_engine_client_keeps_one_connection_for_every_look(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """Looks at different containers go over one kept-alive connection: the SDK's socket adapter gave each request URL
    (each container's inspection) a pool and a new connection of its own. A client made for a reader asks the API
    version of GET /_ping, not GET /version (which makes the engine ask containerd)."""
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the counting proxy stands on a unix socket")
    for index in range(3):
        space.write(f"idle-{index}.yaml", container_yaml(f"idle-{index}", command=["sleep", "600"]))
    assert space.cli("apply").returncode == 0
    proxy = CountingProxy(tmp_path / "engine.sock", docker_engine.address.removeprefix("unix://"))
    proxy.start()
    try:
        engine = DockerEngine(proxy.address)
        listed = engine.listed(owner_id(space.state))
        assert len(listed) == 3 and all(engine.inspect(found.id) is not None for found in listed)
        assert proxy.counts["GET /containers/{}/json"] == 3
        assert proxy.connections == 2, proxy.connections  # the API version's question, then all the rest
        # a reader's client is made on a ping's API-Version (no GET /version), which also answers its first question
        # whether the engine answers; the release is asked when it is wanted
        assert engine.unavailable() is None and "GET /version" not in proxy.counts
        assert proxy.counts["GET /_ping"] == 1, proxy.counts
        assert engine.version() == docker_engine.client().version()["Version"] and proxy.counts["GET /version"] == 1
    finally:
        proxy.close()


def test_a_cold_apply_lists_once_per_look_of_the_pass_not_once_per_workload(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """The events a start causes itself, and the memory each start commits beside the others, send no more looks to
    the engine: with N workloads it listed about 4N times and inspected each new container three times."""
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the counting proxy stands on a unix socket")
    names = [f"cold-{index}" for index in range(5)]
    for name in names:
        space.write(f"{name}.yaml", container_yaml(name, command=HTTPD, resources={"memory": "32Mi"},
                                                   ports=[{"containerPort": 8080, "hostPort": free_port()}]))
    done, calls = counted(space, docker_engine, tmp_path / "apply.sock", "apply")
    assert done.returncode == 0, done.stderr
    assert calls.get("POST /containers/create") == calls.get("POST /containers/{}/start") == len(names), calls
    assert calls.get("GET /containers/json", 0) <= 2, calls  # the seed's keys, the first look (after subscribing)
    assert calls.get("GET /containers/{}/json", 0) <= 2 * len(names), calls  # the engine SDK's after create, the start's
    statuses = {name: space.resource_status(f"{name}.yaml", name) for name in names}
    assert {name: status["phase"] for name, status in statuses.items()} == dict.fromkeys(names, "Running"), statuses
    assert sorted(status["containerId"] for status in statuses.values()) == sorted(c.id for c in ours(docker_engine, space))


def test_starts_with_memory_limits_overlap_when_all_of_them_fit(space: Workspace, docker_engine: EngineUnderTest) -> None:
    """Memory is committed one start at a time only when it could run out: 6 x 32 MiB cannot, so `apply`'s workers
    start them side by side, as Compose does (one at a time, every create was followed by its own start)."""
    names = [f"mem-{index}" for index in range(6)]
    for name in names:
        space.write(f"{name}.yaml", container_yaml(name, command=HTTPD, resources={"memory": "32Mi"},
                                                   ports=[{"containerPort": 8080, "hostPort": free_port()}]))
    since = datetime.now(timezone.utc)
    assert space.cli("apply").returncode == 0
    time.sleep(1.1)  # the engine's event times have one-second resolution in filters
    events = docker_engine.client().events(since=since, until=datetime.now(timezone.utc), decode=True, filters={
        "label": [f"{OWNER_LABEL}={owner_id(space.state)}"], "event": ["create", "start"]})
    order = [event["Action"] for event in events]
    assert sorted(order) == ["create"] * len(names) + ["start"] * len(names), order
    assert "create,create" in ",".join(order), order
    assert [c.status for c in ours(docker_engine, space)] == ["running"] * len(names)


def test_an_exit_behind_its_back_is_seen_by_the_next_look_of_a_running_daemon(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    """What a pass saw is reused only until the engine's events say otherwise: a container killed between two
    passes is seen at once, not at the next listing."""
    space.write("web.yaml", web("web", free_port(), restart={"backoff": {"initialSeconds": 30}}))
    space.start_daemon("--resync", "3600")
    wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running", 60, what="Running")
    the_container(docker_engine, space, "web").kill()
    status = wait_for(lambda: (s := space.resource_status("web.yaml", "web")) and s["phase"] == "BackOff" and s,
                      30, what="the exit seen")
    assert status["lastExit"]["code"] == 137, status


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
    recreate = [event for event in space.evidence("web.yaml") if event.get("action") == "recreate" and event.get("event") == "decision"]
    assert recreate and "spec.env" in recreate[0]["cause"], recreate
    assert recreate[0]["image"] == TEST_IMAGE and recreate[0]["imageId"] == after.image.id
    done = [event for event in space.evidence("web.yaml") if event.get("event") == "action" and event["action"] == "recreate"]
    assert done[-1]["containerId"] == after.id


def test_a_recreate_stops_and_starts_once_and_its_own_exit_wakes_nothing(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """The new container is made while the old one stops, the new one starts, the old one is removed
    (docs/guides/containers.md says why). Its exit and removal are the recreate's own doing: they do not
    queue the workload for another reconcile, which listed and inspected it again (the new container was already
    seen by its start)."""
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the counting proxy stands on a unix socket")
    port = free_port()
    space.write("web.yaml", container_yaml("web", command=HTTPD, ports=[{"containerPort": 8080, "hostPort": port}]))
    assert space.cli("apply").returncode == 0
    space.write("web.yaml", container_yaml("web", command=HTTPD, env={"GREETING": "hi"},
                                           ports=[{"containerPort": 8080, "hostPort": port}]))
    time.sleep(1.1)  # the engine's event times have one-second resolution in filters: none of the first apply's
    since = datetime.now(timezone.utc)
    done, calls = counted(space, docker_engine, tmp_path / "apply.sock", "apply")
    assert done.returncode == 0, done.stderr
    time.sleep(1.1)
    events = docker_engine.client().events(since=since, until=datetime.now(timezone.utc), decode=True, filters={
        "label": [f"{OWNER_LABEL}={owner_id(space.state)}"], "event": ["create", "start", "die", "destroy"]})
    # the new one is made while the old one stops, and starts only once it stopped (it publishes the same port)
    actions = [event["Action"] for event in events]
    assert sorted(actions) == ["create", "destroy", "die", "start"], actions
    assert actions.index("die") < actions.index("start") < actions.index("destroy"), actions
    writes = {endpoint: count for endpoint, count in calls.items() if not endpoint.startswith("GET ")}
    assert writes == {"POST /containers/{}/rename": 1, "POST /containers/create": 1, "POST /containers/{}/stop": 1,
                      "POST /containers/{}/start": 1, "DELETE /containers/{}": 1}, calls
    # listings: the seed's keys, its first look after subscribing; inspections: the old one (seen by the pass),
    # the engine SDK's after the create and when reading the old one's log, the start's
    assert calls.get("GET /containers/json", 0) <= 2 and calls.get("GET /containers/{}/json", 0) <= 4, calls
    replaced = the_container(docker_engine, space, "web")
    assert replaced.name == f"lais-web-{owner_id(space.state)[:8]}", "the workload's one name is the new one's"
    assert "GREETING=hi" in the_container(docker_engine, space, "web").attrs["Config"]["Env"]


def test_a_replacement_that_fails_to_start_ends_failed_with_both_runs_output_kept(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """The replacement is made while the old container runs, but it can only start once the old one stopped: a start
    the engine refuses then leaves the workload failed with nothing of it left, the old run's output kept as the
    previous log and the failed one's as the current, as when the old one was removed first."""
    port, folder = free_port(), tmp_path / "folder"
    folder.mkdir()
    space.write("policy.yaml", policy_yaml(volumeRoots=[str(tmp_path)]))
    serving = ["sh", "-c", "echo the old run; exec httpd -f -p 8080 -h /www"]
    space.write("web.yaml", container_yaml("web", command=serving, ports=[{"containerPort": 8080, "hostPort": port}]))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    # a folder over a file of the image: the engine takes the create and refuses the start
    space.write("web.yaml", container_yaml("web", command=serving, ports=[{"containerPort": 8080, "hostPort": port}],
                                           volumes=[{"source": str(folder), "target": "/www/index.html"}]))
    space.cli("apply")
    condition = space.condition("web.yaml", "web")
    assert condition["reason"] == "ContainerStartFailed" and condition["status"] == "False", condition
    assert ours(docker_engine, space) == []
    logs = space.state / "logs"
    assert (logs / "web.previous.log").read_text().startswith("the old run"), sorted(logs.iterdir())


# -- drift, adoption, the engine going away ------------------------------------------------------------------------


def test_container_removed_behind_its_back_is_repaired_and_the_repair_is_in_evidence(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    port = free_port()
    space.write("web.yaml", web("web", port))
    space.start_daemon()
    first = wait_for(lambda: space.resource_status("web.yaml", "web") or None, 60, what="a status")
    wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running", 60, what="Running")
    original = the_container(docker_engine, space, "web").id
    docker_engine.client().containers.get(original).remove(force=True)
    replaced = wait_for(lambda: [c for c in ours(docker_engine, space, "web") if c.id != original and c.status == "running"],
                        30, what="a new container")
    assert len(replaced) == 1
    wait_for(lambda: get(f"http://127.0.0.1:{port}/") == "hello from a container\n", 30, what="serving again")
    creates = [event for event in space.evidence("web.yaml") if event.get("action") == "create" and event.get("event") == "decision"]
    assert len(creates) == 2 and "gone" in creates[1]["cause"], creates
    assert first["kind"] == "Workload"


def test_a_container_stopped_behind_its_back_is_restarted(space: Workspace, docker_engine: EngineUnderTest) -> None:
    space.write("web.yaml", web("web", free_port(), restart={"backoff": {"initialSeconds": 0.5}}))
    space.start_daemon()
    wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running", 60, what="Running")
    original = the_container(docker_engine, space, "web")
    original.stop(timeout=1)
    wait_for(lambda: (s := space.resource_status("web.yaml", "web")) and s["restartCount"] == 1 and s["phase"] == "Running",
             60, what="a restart")
    assert the_container(docker_engine, space, "web").id != original.id


def test_an_unhealthy_container_is_stopped_and_restarted_with_back_off(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    healthy_for_a_while = ["sh", "-c", "touch /tmp/ok; sleep 2; rm /tmp/ok; exec sleep 600"]
    space.write("flaky.yaml", container_yaml(
        "flaky", command=healthy_for_a_while, restart={"backoff": {"initialSeconds": 1}},
        health={"exec": {"command": ["test", "-f", "/tmp/ok"]}, "periodSeconds": 0.5, "failureThreshold": 2}))
    space.start_daemon()
    wait_for(lambda: (space.condition("flaky.yaml", "flaky") or {}).get("reason") == "Healthy", 60, what="Healthy")
    first = the_container(docker_engine, space, "flaky").id
    wait_for(lambda: (space.resource_status("flaky.yaml", "flaky") or {}).get("restartCount", 0) >= 1, 60, what="a restart")
    stops = [event for event in space.evidence("flaky.yaml") if event.get("action") == "stop" and event["event"] == "decision"]
    assert stops and "test exited 1" in stops[0]["cause"], stops
    assert the_container(docker_engine, space, "flaky").id != first


def test_an_exit_the_reconciler_caused_is_told_from_one_behind_its_back(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    """The engine records an exit, never who asked for it: the stop the reconciler makes (here: unhealthy; an idle
    stop alike) is on record as its own, as a native one is, and a stop by someone else stays a stop it did not make."""
    unhealthy_soon = ["sh", "-c", "touch /tmp/ok; sleep 2; rm /tmp/ok; exec sleep 600"]
    space.write("flaky.yaml", container_yaml(
        "flaky", command=unhealthy_soon, restart={"policy": "Never"},
        health={"exec": {"command": ["test", "-f", "/tmp/ok"]}, "periodSeconds": 0.5, "failureThreshold": 2}))
    space.write("web.yaml", web("web", free_port(), restart={"policy": "Never"}))
    space.start_daemon()
    wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running", 60, what="Running")
    the_container(docker_engine, space, "web").stop(timeout=1)
    stopped = wait_for(lambda: (space.resource_status("flaky.yaml", "flaky") or {}).get("lastExit"), 60,
                       what="the unhealthy stop")
    behind = wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("lastExit"), 60,
                      what="the stop behind its back")
    assert stopped.get("stoppedByReconciler") is True, stopped
    assert not behind.get("stoppedByReconciler"), behind


def test_daemon_killed_and_restarted_adopts_the_same_container(space: Workspace, docker_engine: EngineUnderTest) -> None:
    space.write("web.yaml", web("web", free_port()))
    space.start_daemon()
    wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running", 60, what="Running")
    original = the_container(docker_engine, space, "web").id
    space.stop_daemon(signal.SIGKILL)
    space.start_daemon()
    wait_for(lambda: "watching" in space.daemon_log.read_text(), 30, what="the new daemon")
    time.sleep(2)  # a pass that would recreate it has had its chance
    assert the_container(docker_engine, space, "web").id == original
    assert space.actions("web.yaml").count("create") == 1
    assert space.resource_status("web.yaml", "web")["containerId"] == original


def test_engine_down_is_reported_and_nothing_else_stops_then_it_converges_again(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    if docker_engine.private is None:
        pytest.skip("the tests were given an engine (RECONCILER_TEST_DOCKER_HOST) and must not stop it")
    port = free_port()
    space.write("web.yaml", web("web", port))
    space.write("native.yaml", workload_yaml("native"))
    space.start_daemon("--resync", "1")
    wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running", 60, what="Running")
    native_pid = wait_for(lambda: space.pid("native.yaml", "native"), 30, what="the native workload")
    docker_engine.private.stop()
    try:
        down = wait_for(lambda: (space.condition("web.yaml", "web") or {}).get("reason") == "EngineUnavailable"
                        and space.condition("web.yaml", "web"), 60, what="EngineUnavailable")
        assert docker_engine.address in down["message"], down
        assert space.pid("native.yaml", "native") == native_pid  # nothing else in the reconciler stops
    finally:
        docker_engine.private.start()
    wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running", 60, what="Running again")
    wait_for(lambda: get(f"http://127.0.0.1:{port}/") == "hello from a container\n", 30, what="serving again")
    assert the_container(docker_engine, space, "web").status == "running"
    assert space._daemon is not None and space._daemon.poll() is None


# The daemon, its system clock slewing 50 ms a second against the boot clock (NTP slews up to 0.5 ms a second;
# ten times that makes it show within the seconds an exit backs off).
SLEWED_DAEMON = """
import runpy, sys, time
from reconciler.observe import clock
began = time.monotonic()
clock._measured_step = lambda: 0.05 * (time.monotonic() - began)
sys.argv[0] = "reconciler"
runpy.run_module("reconciler", run_name="__main__", alter_sys=True)
"""


def test_an_exit_is_counted_once_however_many_passes_see_it(space: Workspace, docker_engine: EngineUnderTest) -> None:
    """Docker's FinishedAt moved onto the reconciler's clock is another time whenever the offset between the clocks
    moves (reading noise once; a slewed system clock still): an exit identified by that time was counted again on
    every pass, and its back-off doubled each time (after an engine restart: minutes, not seconds)."""
    space.write("crash.yaml", container_yaml("crash", command=["sh", "-c", "sleep 1; exit 3"],
                                             restart={"policy": "Always", "backoff": {"initialSeconds": 5}}))
    with space.daemon_log.open("a") as log:
        space._daemon = subprocess.Popen(
            [PYTHON, "-c", SLEWED_DAEMON, "--log-level", "DEBUG", "run", str(space.desired), "--state-dir",
             str(space.state), "--resync", "0.1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    first = wait_for(lambda: (space.resource_status("crash.yaml", "crash") or {}).get("nextRetryTime")
                     and space.resource_status("crash.yaml", "crash"), 30, what="the first exit backing off")
    for _ in range(30):  # some thirty passes see the same exit while the clocks move apart by 10 ms and more
        status = space.resource_status("crash.yaml", "crash") or {}
        if status.get("restartCount") == first.get("restartCount"):  # not restarted yet: backing off from that exit
            assert (status.get("lastExit"), status.get("nextRetryTime")) == (first["lastExit"], first["nextRetryTime"]), \
                "one exit is one back-off of initialSeconds, however often it is looked at"
        time.sleep(0.1)
    wait_for(lambda: (space.resource_status("crash.yaml", "crash") or {}).get("restartCount") == 1, 15,
             what="the restart once its 5 s back-off is over")


def test_a_start_cut_short_by_a_crash_is_replaced_not_duplicated(space: Workspace, docker_engine: EngineUnderTest) -> None:
    space.write("web.yaml", web("web", free_port()))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    running = the_container(docker_engine, space, "web")
    labels = dict(running.labels)
    running.remove(force=True)
    # what a crash between the engine's create and start leaves: our labels on a container that never ran
    left = docker_engine.client().containers.create(TEST_IMAGE, ["sleep", "600"], name=running.name, labels=labels)
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    replaced = the_container(docker_engine, space, "web")
    assert replaced.status == "running" and replaced.id not in (left.id, running.id)


def test_containers_without_our_owner_label_are_never_touched(space: Workspace, docker_engine: EngineUnderTest) -> None:
    client = docker_engine.client()
    foreign = client.containers.run(TEST_IMAGE, ["sleep", "600"], detach=True, labels={WORKLOAD_LABEL: "web"})
    try:
        space.write("web.yaml", web("web", free_port()))
        assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
        assert space.cli("down").returncode == 0
        foreign.reload()
        assert foreign.status == "running"
        assert ours(docker_engine, space) == []
    finally:
        foreign.remove(force=True)


def test_down_while_the_engine_is_away_says_what_still_runs(space: Workspace, docker_engine: EngineUnderTest) -> None:
    space.write("talk.yaml", container_yaml("talk", command=["sleep", "600"]))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    away = space.cli("down", env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert away.returncode == 1 and "Workload/talk: not removed" in away.stdout, away.stdout + away.stderr
    assert len(ours(docker_engine, space, "talk")) == 1
    refused = space.evidence("talk.yaml")[-2:]  # the removal's decision has its outcome: never one a crash cut short
    assert [(line["event"], line["action"]) for line in refused] == [("decision", "delete"), ("action", "delete")], refused
    assert refused[1]["result"] == "failed" and refused[1]["failure"]["reason"] == "EngineUnavailable", refused
    assert space.cli("down").returncode == 0
    assert ours(docker_engine, space, "talk") == []


def test_down_while_the_engine_is_away_removes_what_never_had_a_container(space: Workspace) -> None:
    away = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    space.write("never.yaml", container_yaml("never", command=["sleep", "600"]))
    space.cli("apply", env=away)
    assert space.condition("never.yaml", "never")["reason"] == "EngineUnavailable"
    done = space.cli("down", env=away)
    assert done.returncode == 0 and "Workload/never: removed" in done.stdout, done.stdout + done.stderr


# -- removal, logs, exits ------------------------------------------------------------------------------------------


def test_removing_the_spec_removes_the_container_and_its_logs_stay_readable(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    space.write("talk.yaml", container_yaml("talk", command=["sh", "-c", "echo said-hello; exec sleep 600"]))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    assert len(ours(docker_engine, space, "talk")) == 1
    live = wait_for(lambda: "said-hello" in (out := space.cli("logs", "talk")).stdout and out, 10, what="live output")
    assert live.returncode == 0
    (space.desired / "talk.yaml").unlink()
    removed = space.cli("apply", "--allow-empty")
    assert removed.returncode == 0, removed.stderr
    assert ours(docker_engine, space, "talk") == []
    logs = space.cli("logs", "talk")
    assert logs.returncode == 0 and "said-hello" in logs.stdout, logs.stdout + logs.stderr


def test_logs_of_a_container_ask_the_engine_by_label_whatever_the_folder_says(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """`logs` finds a container workload's output by the owner's and the workload's labels: the folder is not read (a
    broken spec, or one naming another image, changes nothing), and a newer container that carries both labels but a
    launch label its hash label does not vouch for (made behind the reconciler's back) is not read. One listing, no
    inspection of each container (the SDK's own look at the one it reads, for its TTY, aside)."""
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the counting proxy stands on a unix socket")
    space.write("talk.yaml", container_yaml("talk", command=["sh", "-c", "echo said-hello; exec sleep 600"]))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    wait_for(lambda: "said-hello" in space.cli("logs", "talk").stdout, 10, what="live output")
    space.write("talk.yaml", "kind: Workload\nmetadata: {name: talk\n")
    space.write("other.yaml", container_yaml("other", image="elsewhere/impostor:1"))
    forged = {OWNER_LABEL: owner_id(space.state), WORKLOAD_LABEL: "talk", "dev.localaistack.launch": '{"image": "x"}',
              "dev.localaistack.config-hash": "0" * 64}
    impostor = docker_engine.client().containers.run(TEST_IMAGE, ["sh", "-c", "echo impostor-output; exec sleep 600"],
                                                     labels=forged, detach=True)
    try:
        wait_for(lambda: b"impostor-output" in impostor.logs(), 10, what="the impostor's output")
        done, calls = counted(space, docker_engine, tmp_path / "engine.sock", "logs", "talk", "--tail", "5")
    finally:
        impostor.remove(force=True)
    assert done.returncode == 0 and "said-hello" in done.stdout and "impostor" not in done.stdout, done.stdout + done.stderr
    assert calls["GET /containers/json"] == 1 and calls.get("GET /containers/{}/json", 0) <= 1, calls
    assert "GET /version" not in calls, calls  # logs never asks the engine's release


def test_logs_follow_a_container_as_it_writes(space: Workspace, docker_engine: EngineUnderTest) -> None:
    """`logs -f` streams what the container writes after the command started, straight from the engine."""
    space.write("later.yaml", container_yaml("later", command=["sh", "-c", "echo first; sleep 5; echo second; exec sleep 600"]))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    command = [PYTHON, "-m", "reconciler", "logs", "later", str(space.desired), "--state-dir", str(space.state), "-f"]
    following = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, following.kill)  # a stream that never says "second" fails the test, not the run
    watchdog.start()
    try:
        assert following.stdout is not None
        said = [following.stdout.readline().strip() for _ in range(2)]
    finally:
        watchdog.cancel()
        following.kill()
        following.wait()
    assert said == ["first", "second"], (said, following.stderr.read() if following.stderr else "")


def test_a_crashing_container_backs_off_with_its_exit_code_and_output_kept(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    space.write("crash.yaml", container_yaml("crash", command=["sh", "-c", "echo about-to-fail; exit 3"],
                                             restart={"policy": "OnFailure", "backoff": {"initialSeconds": 30}}))
    space.cli("apply")
    wait_for(lambda: ours(docker_engine, space, "crash")[0].wait(timeout=10), 15, what="the container to exit")
    space.cli("apply")
    status = space.resource_status("crash.yaml", "crash")
    assert status["lastExit"]["code"] == 3 and status["phase"] == "BackOff", status
    assert status["nextRetryTime"] is not None
    exited = the_container(docker_engine, space, "crash")
    assert exited.status == "exited"  # kept until replaced: its story stays with the engine too
    assert "about-to-fail" in space.cli("logs", "crash").stdout


def test_exec_health_check_runs_inside_the_container(space: Workspace, docker_engine: EngineUnderTest) -> None:
    space.write("execd.yaml", container_yaml("execd", command=["sleep", "600"],
                                             health={"exec": {"command": ["test", "-f", "/www/health"]}, "periodSeconds": 1}))
    done = space.cli("apply", "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert space.condition("execd.yaml", "execd")["reason"] == "Healthy"
    assert "test exited 0" in space.resource_status("execd.yaml", "execd")["health"]


def test_a_new_image_under_the_same_tag_recreates_the_container(space: Workspace, docker_engine: EngineUnderTest) -> None:
    reference = "reconciler-test/retag:1"
    import_image(docker_engine.address, reference, marker="one")
    space.write("tagged.yaml", container_yaml("tagged", image=reference, command=["sleep", "600"]))
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    before = the_container(docker_engine, space, "tagged")
    new_id = import_image(docker_engine.address, reference, marker="two")
    assert space.cli("apply", "--wait", "--timeout", "60").returncode == 0
    after = the_container(docker_engine, space, "tagged")
    assert after.id != before.id and after.image.id == new_id
    recreate = [event for event in space.evidence("tagged.yaml") if event.get("action") == "recreate" and event.get("event") == "decision"]
    assert recreate and "the image (its ID) changed" in recreate[0]["cause"], recreate


# -- the policy and bad input --------------------------------------------------------------------------------------


def test_default_policy_allows_no_image(workspace: Workspace, docker_engine: EngineUnderTest) -> None:
    (workspace.desired / "policy.yaml").unlink()
    workspace.write("web.yaml", container_yaml("web", command=["sleep", "600"]))
    workspace.cli("apply")
    condition = workspace.condition("web.yaml", "web")
    assert condition["reason"] == "PolicyDenied" and "containers.images" in condition["message"], condition
    assert ours(docker_engine, workspace) == []


def test_relaxations_need_the_policy(space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "note.txt").write_text("from the host\n")
    spec = dict(command=["sleep", "600"], volumes=[{"source": str(data), "target": "/data"}],
                security={"capabilities": ["NET_BIND_SERVICE"]})
    space.write("app.yaml", container_yaml("app", **spec))
    space.cli("apply")
    message = space.condition("app.yaml", "app")["message"]
    assert "containers.volumeRoots" in message and "containers.capabilities" in message, message
    assert ours(docker_engine, space) == []
    space.write("policy.yaml", policy_yaml(volumeRoots=[str(tmp_path)], capabilities=["NET_BIND_SERVICE"]))
    done = space.cli("apply", "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    container = the_container(docker_engine, space, "app")
    assert container.attrs["HostConfig"]["CapAdd"] == ["NET_BIND_SERVICE"]
    assert container.exec_run(["cat", "/data/note.txt"]).output == b"from the host\n"
    assert container.exec_run(["touch", "/data/new"]).exit_code != 0  # read-only unless the spec says otherwise


def test_host_port_in_use_fails_explicitly_and_leaves_no_container(space: Workspace, docker_engine: EngineUnderTest) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        space.write("web.yaml", web("web", port))
        space.cli("apply")
        condition = space.condition("web.yaml", "web")
        assert condition["reason"] == "PortInUse" and str(port) in condition["message"], condition
        assert ours(docker_engine, space) == []


def test_image_that_cannot_be_pulled_backs_off_with_the_engines_message(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    space.write("policy.yaml", policy_yaml(images=["registry.invalid/*"], pull=True))
    space.write("far.yaml", container_yaml("far", image="registry.invalid/nothing:1"))
    applied = space.cli("apply", timeout=120)
    assert "no such host" in applied.stderr  # the engine's own words
    status = space.resource_status("far.yaml", "far")
    condition = space.condition("far.yaml", "far")
    assert condition["reason"] == "ImagePullFailed" and "registry.invalid/nothing:1" in condition["message"], condition
    assert status["phase"] == "BackOff" and status["nextRetryTime"] is not None
    assert ours(docker_engine, space) == []
    failed = [line for line in space.evidence("far.yaml") if line["event"] == "action"][-1]
    assert failed["failedOperation"] == {"op": "pull", "cause": "image registry.invalid/nothing:1 is not on this host"}


def test_a_replacement_may_publish_the_old_one_s_port_on_another_address(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    """The replacement is made while the old container still publishes its port: that port, on whatever address, is
    the old one's until it stops, not a port in use by someone else."""
    body = yaml.safe_load(policy_yaml())
    body["spec"]["network"] = {"exposed": [{"address": "0.0.0.0"}]}
    space.write("policy.yaml", yaml.safe_dump(body, sort_keys=False))
    port = free_port()
    space.write("web.yaml", container_yaml("web", command=HTTPD, ports=[{"containerPort": 8080, "hostPort": port}]))
    assert space.cli("apply").returncode == 0
    space.write("web.yaml", container_yaml("web", command=HTTPD, ports=[
        {"containerPort": 8080, "hostPort": port, "hostIP": "0.0.0.0"}]))
    done = space.cli("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    bindings = the_container(docker_engine, space, "web").attrs["HostConfig"]["PortBindings"]
    assert bindings == {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}, bindings


def test_a_replacement_whose_image_cannot_be_pulled_ends_as_it_did_when_the_old_one_stopped_first(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    """The image is pulled while the old container still serves; a pull that fails still ends the workload as when
    the old one was stopped before the pull: nothing of it left, backing off, the failed pull named."""
    space.write("policy.yaml", policy_yaml(images=["reconciler-test/*", "registry.invalid/*"], pull=True))
    space.write("far.yaml", container_yaml("far", command=["sleep", "600"]))
    assert space.cli("apply").returncode == 0
    space.write("far.yaml", container_yaml("far", image="registry.invalid/nothing:1", command=["sleep", "600"]))
    space.cli("apply", timeout=120)
    condition = space.condition("far.yaml", "far")
    assert condition["reason"] == "ImagePullFailed", condition
    assert space.resource_status("far.yaml", "far")["phase"] == "BackOff"
    assert ours(docker_engine, space) == []
    failed = [line for line in space.evidence("far.yaml") if line["event"] == "action"][-1]
    assert failed["failedOperation"]["op"] == "pull", failed


def test_pulling_needs_the_policy(space: Workspace, docker_engine: EngineUnderTest) -> None:
    space.write("far.yaml", container_yaml("far", image="reconciler-test/absent:1"))
    space.cli("apply")
    condition = space.condition("far.yaml", "far")
    assert condition["reason"] == "PolicyDenied" and "containers.pull" in condition["message"], condition


def test_gpu_request_without_a_gpu_runtime_fails_explicitly(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps([{"index": 0, "name": "Fake GPU", "memoryTotal": 8 * 1024**3}]))
    space.write("gpu.yaml", container_yaml("gpu", command=["sleep", "600"], resources={"gpus": {"count": 1}}))
    space.cli("apply", env={**os.environ, "RECONCILER_FAKE_GPUS": str(gpus)})
    condition = space.condition("gpu.yaml", "gpu")
    assert condition["reason"] == "GPURuntimeUnavailable", condition
    assert ours(docker_engine, space) == []


@pytest.mark.parametrize(("spec", "expected"), [
    ({"image": "Not A/Reference"}, "expected an image reference"),
    ({"security": {"capabilities": ["NET_BIND_SERVICE", "MAKE_COFFEE"]}}, "capabilities: item 1: expected a capability name"),
    ({"ports": [{"containerPort": 80, "hostIP": "localhost"}]}, "expected an IP address"),
])
def test_bad_container_specs_are_refused_at_load_with_file_and_line(
    space: Workspace, docker_engine: EngineUnderTest, spec: dict, expected: str
) -> None:
    space.write("bad.yaml", container_yaml("bad", **spec))
    checked = space.cli("validate")
    assert checked.returncode != 0 and expected in checked.stdout + checked.stderr
    assert "bad.yaml:" in checked.stdout + checked.stderr
    space.cli("apply")
    assert ours(docker_engine, space) == []


def test_a_container_update_that_never_turns_healthy_is_rolled_back_onto_the_image_it_was_proven_with(
        space: Workspace, docker_engine: EngineUnderTest) -> None:
    port, update = free_port(), {"progressDeadlineSeconds": 4, "soakSeconds": 1, "rollback": "Auto"}
    image = "reconciler-test/moving:1"
    proven_image = import_image(docker_engine.address, image, marker="first")
    space.write("web.yaml", web("web", port, update=update).replace(TEST_IMAGE, image))
    space.start_daemon("--resync", "3600")
    proven = lambda generation: any(e.get("outcome") == "proven" and e["generation"] == generation  # noqa: E731
                                    for e in space.evidence("web.yaml") if e["event"] == "rollout")
    wait_for(lambda: proven(1), 60, what="generation 1 proven")
    good = the_container(docker_engine, space, "web").labels["dev.localaistack.config-hash"]

    # the tag moves to another image, and the update that follows never turns healthy
    assert import_image(docker_engine.address, image, marker="second") != proven_image
    broken = web("web", port, update=update).replace(TEST_IMAGE, image).replace("path: /health", "path: /missing")
    space.write("web.yaml", broken)
    wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "RolledBack", 60, what="rolled back")
    wait_for(lambda: the_container(docker_engine, space, "web").labels["dev.localaistack.config-hash"] == good, 30,
             what="the known-good container back")
    assert the_container(docker_engine, space, "web").image.id == proven_image  # not what the tag names now
    failed = next(e for e in space.evidence("web.yaml") if e.get("outcome") == "failed")
    assert failed["generation"] == 2 and "404" in failed["message"], failed
    wait_for(lambda: (space.condition("web.yaml", "web") or {}).get("status") == "True", 30, what="Ready again")
    assert len(ours(docker_engine, space, "web")) == 1
    record = json.loads((space.state / "resources" / "Workload.web.json").read_text())
    assert record["knownGood"]["pins"]["imageId"] == proven_image


def test_a_stop_that_fails_takes_back_its_request_so_a_later_exit_is_not_the_reconcilers(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop request is on record before the stop call (a crash between them must not make it a crash); when the
    call fails (here the engine's connection drops) and the container runs on, the request is taken back: its exit
    later, by itself or by someone else, is no stop of the reconciler's. So is the exit the stop expected (no news):
    that later exit wakes the workload (it was swallowed)."""
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the cutting proxy stands on a unix socket")
    from reconciler.control.reconciler import Reconciler
    from reconciler.drive.protocol import StartFailed
    from reconciler.observe.docker_engine import EngineUnavailable

    space.write("kept.yaml", container_yaml("kept", command=["sleep", "600"]))
    assert space.cli("apply").returncode == 0
    proxy = CountingProxy(tmp_path / "cut.sock", docker_engine.address.removeprefix("unix://"),
                          cut=frozenset({"POST /containers/{}/stop"}))
    proxy.start()
    woken: list[str] = []
    try:
        monkeypatch.setenv("DOCKER_HOST", proxy.address)
        drivers = Reconciler(space.desired, space.state, on_exit=woken.append).parts.drivers
        assert drivers.observe("kept").running_pid  # subscribed to the engine's events from here on
        with pytest.raises((EngineUnavailable, StartFailed)):
            drivers.stop("kept", 1, forget=False)
        assert proxy.counts["POST /containers/{}/stop"] >= 1
        container = the_container(docker_engine, space, "kept")
        assert container.status == "running"
        container.kill()  # behind its back
        ended = wait_for(lambda: (seen := drivers.observe("kept")).record and seen.record.exit, 30, what="the exit")
        assert ended.stopped_by_reconciler is False, ended
        wait_for(lambda: "kept" in woken, 30, what="the exit waking the workload")
    finally:
        proxy.close()



def test_a_replacement_whose_old_container_does_not_stop_is_removed_and_the_old_one_serves_on(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """The replacement is made before the old container stops: when that stop fails (the engine's connection drops),
    the replacement that never started goes, and the old container serves on alone until a pass replaces it."""
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the cutting proxy stands on a unix socket")
    port = free_port()
    space.write("web.yaml", container_yaml("web", command=HTTPD, ports=[{"containerPort": 8080, "hostPort": port}]))
    assert space.cli("apply").returncode == 0
    old = the_container(docker_engine, space, "web")
    space.write("web.yaml", container_yaml("web", command=HTTPD, env={"GREETING": "hi"},
                                           ports=[{"containerPort": 8080, "hostPort": port}]))
    proxy = CountingProxy(tmp_path / "cut.sock", docker_engine.address.removeprefix("unix://"),
                          cut=frozenset({"POST /containers/{}/stop"}))
    proxy.start()
    try:
        space.cli("apply", env={**os.environ, "DOCKER_HOST": proxy.address})
        assert proxy.counts["POST /containers/{}/stop"] >= 1 and proxy.counts["POST /containers/create"] == 1
    finally:
        proxy.close()
    assert [(container.id, container.status) for container in ours(docker_engine, space, "web")] == [(old.id, "running")]
    assert get(f"http://127.0.0.1:{port}/") == "hello from a container\n"
    assert space.cli("apply").returncode == 0
    replaced = the_container(docker_engine, space, "web")
    assert replaced.id != old.id and "GREETING=hi" in replaced.attrs["Config"]["Env"]
    assert replaced.name == f"lais-web-{owner_id(space.state)[:8]}"
