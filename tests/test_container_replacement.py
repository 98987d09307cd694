"""A container replacement whose engine calls fail part way (a proxy cuts them), or whose old container was left
set aside: the evidence says what ran, the new container that started is the workload's, and what is left over is
tidied by the next pass."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.drive.process import owner_id
from tests.conftest import Workspace, wait_for
from tests.docker_engine import TEST_IMAGE, EngineUnderTest
from tests.engine_proxy import CountingProxy
from tests.test_containers import HTTPD, container_yaml, free_port, get, ours, policy_yaml

pytestmark = pytest.mark.usefixtures("docker_engine")


@pytest.fixture
def space(workspace: Workspace, docker_engine: EngineUnderTest) -> Workspace:
    if not docker_engine.address.startswith("unix://"):
        pytest.skip("the cutting proxy stands on a unix socket")
    workspace.write("policy.yaml", policy_yaml())
    return workspace


def web(port: int, **spec: Any) -> str:
    return container_yaml("web", command=HTTPD, ports=[{"containerPort": 8080, "hostPort": port}], **spec)


def canonical(space: Workspace) -> str:
    return f"lais-web-{owner_id(space.state)[:8]}"


def last_action(space: Workspace) -> dict[str, Any]:
    return [line for line in space.evidence("web.yaml") if line["event"] == "action"][-1]


def started_with_the_old_one_s_removal_cut(space: Workspace, docker_engine: EngineUnderTest, proxy: CountingProxy,
                                           port: int) -> str:
    """Replace web's container through `proxy` with every container removal cut; returns the new container's id."""
    proxy.cut = frozenset({"DELETE /containers/{}"})
    space.write("web.yaml", web(port, env={"GREETING": "hi"}))
    new = wait_for(lambda: [c for c in ours(docker_engine, space, "web")
                            if c.status == "running" and "GREETING=hi" in c.attrs["Config"]["Env"]], 60,
                   what="the replacement running")[0]
    wait_for(lambda: proxy.counts["DELETE /containers/{}"] >= 1, 30, what="the old one's removal tried")
    return new.id


def replaced_with_cut(space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path, cut: str) -> Any:
    """Start web, change its spec, and apply the change through a proxy that cuts `cut`; returns the old container."""
    port = free_port()
    space.write("web.yaml", web(port))
    assert space.cli("apply").returncode == 0
    old = ours(docker_engine, space, "web")[0]
    space.write("web.yaml", web(port, env={"GREETING": "hi"}))
    proxy = CountingProxy(tmp_path / "cut.sock", docker_engine.address.removeprefix("unix://"), cut=frozenset({cut}))
    proxy.start()
    try:
        space.cli("apply", env={**os.environ, "DOCKER_HOST": proxy.address})
        assert proxy.counts[cut] >= 1
    finally:
        proxy.close()
    return old


def test_a_replacement_started_is_a_start_that_succeeded_though_the_old_one_s_removal_failed(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """Once the new container's start returned, a failed removal of the old one is no failed start: the outcome is
    the new container (Ready), and the next pass removes the old one (its output kept)."""
    port = free_port()
    space.write("web.yaml", web(port))
    assert space.cli("apply").returncode == 0
    old = ours(docker_engine, space, "web")[0]
    proxy = CountingProxy(tmp_path / "cut.sock", docker_engine.address.removeprefix("unix://"))
    proxy.start()
    try:
        proxy.cut = frozenset({"DELETE /containers/{}"})
        space.write("web.yaml", web(port, env={"GREETING": "hi"}))
        space.cli("apply", env={**os.environ, "DOCKER_HOST": proxy.address})
        assert proxy.counts["DELETE /containers/{}"] >= 1
    finally:
        proxy.close()
    found = {c.id: c for c in ours(docker_engine, space, "web")}
    new_id = next(id_ for id_, c in found.items() if c.status == "running")
    assert new_id != old.id and old.id in found, found  # the old one's removal was cut: it is still there
    action = last_action(space)
    assert action["result"] in ("done", "started") and "failedOperation" not in action, action
    assert (space.condition("web.yaml", "web") or {}).get("status") == "True"
    assert get(f"http://127.0.0.1:{port}/") == "hello from a container\n"
    assert found[new_id].name == canonical(space)


def test_a_daemon_pass_removes_the_old_container_a_replacement_could_not_remove(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """Not only a restart's adopt: the daemon's next pass (a resync here) sees two containers of one workload and
    removes the one not running, with a log line that names the failed removal as a possible cause."""
    port = free_port()
    space.write("web.yaml", web(port))
    proxy = CountingProxy(tmp_path / "cut.sock", docker_engine.address.removeprefix("unix://"))
    proxy.start()
    try:
        space.start_daemon("--resync", "1", env={**os.environ, "DOCKER_HOST": proxy.address})
        wait_for(lambda: [c.status for c in ours(docker_engine, space, "web")] == ["running"], 60, what="first start")
        new_id = started_with_the_old_one_s_removal_cut(space, docker_engine, proxy, port)
        assert len(ours(docker_engine, space, "web")) == 2
        proxy.cut = frozenset()
        wait_for(lambda: [c.id for c in ours(docker_engine, space, "web")] == [new_id], 30,
                 what="a pass removing the old container")
    finally:
        space.stop_daemon()
        proxy.close()
    assert "its old container's removal failed" in space.daemon_log.read_text()


def test_a_failed_stop_of_the_old_container_is_the_failed_operation_and_it_serves_on_under_its_name(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    old = replaced_with_cut(space, docker_engine, tmp_path, "POST /containers/{}/stop")
    action = last_action(space)
    assert action["result"] == "failed" and action["failedOperation"]["op"] == "stop", action
    assert [op["op"] for op in action.get("operations", [])] == [], action
    assert [(c.id, c.status, c.name) for c in ours(docker_engine, space, "web")] == [(old.id, "running", canonical(space))]


def test_a_lone_container_left_set_aside_gets_the_workload_s_name_back(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    """A crash between the old container's rename and its replacement's create, the spec then unchanged: the one
    container is renamed back, not left under its set-aside name for good."""
    port = free_port()
    space.write("web.yaml", web(port))
    assert space.cli("apply").returncode == 0
    old = ours(docker_engine, space, "web")[0]
    old.rename(f"{old.name}-{old.id[:12]}")  # what a kill between the rename and the create leaves
    assert space.cli("apply").returncode == 0
    assert [(c.id, c.name) for c in ours(docker_engine, space, "web")] == [(old.id, canonical(space))]


def test_a_replacement_whose_old_container_cannot_be_renamed_stops_it_first(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    """A container not ours holding the set-aside name makes the rename fail: the replacement goes the older way
    (stop, remove, create, start), and the workload runs the new spec."""
    port = free_port()
    space.write("web.yaml", web(port))
    assert space.cli("apply").returncode == 0
    old = ours(docker_engine, space, "web")[0]
    squatter = docker_engine.client().containers.create(TEST_IMAGE, ["sleep", "600"], name=f"{old.name}-{old.id[:12]}")
    try:
        space.write("web.yaml", web(port, env={"GREETING": "hi"}))
        done = space.cli("apply")
        assert done.returncode == 0, done.stdout + done.stderr
        running = ours(docker_engine, space, "web")
        assert [(c.status, c.name) for c in running] == [("running", canonical(space))]
        assert running[0].id != old.id and "GREETING=hi" in running[0].attrs["Config"]["Env"]
        assert last_action(space)["result"] in ("done", "started")
        squatter.reload()
        assert squatter.status == "created"  # not ours: untouched
    finally:
        squatter.remove(force=True)


def test_logs_read_the_running_container_not_a_replacement_that_never_started(
    space: Workspace, docker_engine: EngineUnderTest
) -> None:
    """Until a pass tidies a cut-short replacement, `logs` shows what status reports: the running container's output."""
    space.write("talk.yaml", container_yaml("talk", command=["sh", "-c", "echo said-by-the-running-one; sleep 600"]))
    assert space.cli("apply").returncode == 0
    old = ours(docker_engine, space, "talk")[0]
    wait_for(lambda: b"said-by-the-running-one" in old.logs(), 30, what="the output")
    name = old.name
    old.rename(f"{name}-{old.id[:12]}")
    docker_engine.client().containers.create(TEST_IMAGE, ["sleep", "600"], name=name, labels=old.labels)
    shown = space.cli("logs", "talk")
    assert "said-by-the-running-one" in shown.stdout, shown.stdout + shown.stderr


def test_a_replacement_whose_create_is_cut_still_says_the_old_container_stopped(
    space: Workspace, docker_engine: EngineUnderTest, tmp_path: Path
) -> None:
    """The old container stops while its replacement is made: when the create then fails (here the engine's connection
    drops), the evidence still names the stop that happened, beside the failed start."""
    old = replaced_with_cut(space, docker_engine, tmp_path, "POST /containers/create")
    assert [(c.id, c.status) for c in ours(docker_engine, space, "web")] == [(old.id, "exited")]
    action = last_action(space)
    assert action["result"] == "failed" and action["failedOperation"]["op"] == "start", action
    assert [op["op"] for op in action.get("operations", [])] == ["stop"], action
