"""The daemon SIGKILLed during a container replacement (made while the old one stops, the new one started, the old
one removed; base/crash_points.py), and what a crash between the make and the stop leaves, built by hand: never two
containers serving, and the restart leaves the workload one container under its name (renamed back if it was
left set aside), with any cut-short decision closed."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import pytest

from reconciler.base.crash_points import CRASH_VARIABLE
from reconciler.drive.process import owner_id
from tests.conftest import Workspace, wait_for
from tests.docker_engine import TEST_IMAGE, EngineUnderTest
from tests.faults.conftest import Ledger
from tests.faults.test_cut_short_records import assert_chain_verifies, closed_decision
from tests.test_containers import HTTPD, container_yaml, free_port, get, ours, policy_yaml

if TYPE_CHECKING:
    from docker.models.containers import Container


def web(port: int, **spec: object) -> str:
    return container_yaml("web", command=HTTPD, ports=[{"containerPort": 8080, "hostPort": port}], **spec)


def answer(port: int) -> str | None:
    """What the workload's port serves; None while nothing listens there (a container just started may not yet)."""
    try:
        return get(f"http://127.0.0.1:{port}/")
    except OSError:
        return None


def replacing_until_killed(workspace: Workspace, docker_engine: EngineUnderTest, point: str) -> tuple[int, Container]:
    """`web` converged, its spec changed, and a daemon SIGKILLed at `point` of its replacement: the port and the old
    container."""
    port = free_port()
    workspace.write("policy.yaml", policy_yaml())
    workspace.write("web.yaml", web(port))
    assert workspace.cli("apply").returncode == 0
    old = ours(docker_engine, workspace, "web")[0]
    workspace.write("web.yaml", web(port, env={"GREETING": "hi"}))
    daemon = workspace.start_daemon(env={**os.environ, CRASH_VARIABLE: point})
    assert daemon.wait(timeout=90) == -signal.SIGKILL
    workspace.stop_daemon()
    return port, old


@pytest.mark.parametrize("point, left, result", [
    ("replaced-stopped", ["created", "exited"], "not started"),
    ("replacement-started", ["exited", "running"], "adopted"),
])
def test_a_replacement_cut_short_at_any_step_ends_with_one_container_of_the_new_spec(
    point: str, left: list[str], result: str, workspace: Workspace, docker_engine: EngineUnderTest, ledger: Ledger
) -> None:
    row = ledger.row(f"daemon SIGKILLed during a container replacement ({point})",
                     "never two serving; the restart keeps one container under the workload's name, closes the "
                     "decision and converges on the new spec")
    row.runs += 1
    port, old = replacing_until_killed(workspace, docker_engine, point)
    crashed = ours(docker_engine, workspace, "web")
    assert sorted(container.status for container in crashed) == left, [(c.name, c.status) for c in crashed]
    assert old.id in [container.id for container in crashed]

    workspace.start_daemon()
    ended, _ = closed_decision(workspace, "web.yaml", "the cut-short replacement's outcome")
    assert (ended["action"], ended["result"]) == ("recreate", result), ended
    name = f"lais-web-{owner_id(workspace.state)[:8]}"

    def converged() -> bool:
        found = ours(docker_engine, workspace, "web")
        return len(found) == 1 and found[0].status == "running" and found[0].name == name \
            and "GREETING=hi" in found[0].attrs["Config"]["Env"]
    wait_for(converged, 60, what="one container of the new spec under the workload's name")
    wait_for(lambda: answer(port) == "hello from a container\n", 10, what="the new container serving")
    assert_chain_verifies(workspace)
    row.passed += 1


def made_beside_the_old_one(engine: EngineUnderTest, workspace: Workspace) -> Container:
    """What a crash leaves while the old container stops and its replacement is made (they overlap): the old one,
    running under a name of its own, and one that never started under the workload's name (here with the old one's
    labels: a launch as adoptable as any). Returns the old one."""
    old = ours(engine, workspace, "web")[0]
    name = old.name
    old.rename(f"{name}-{old.id[:12]}")
    engine.client().containers.create(TEST_IMAGE, HTTPD, name=name, labels=old.labels)
    return old


@pytest.mark.parametrize("changed", [True, False])
def test_a_replacement_made_beside_a_running_old_one_leaves_one_container_after_a_restart(
    changed: bool, workspace: Workspace, docker_engine: EngineUnderTest, ledger: Ledger
) -> None:
    """Found by a restart, with the spec still changed: replaced again, one container of the new spec. With the spec
    gone back: the replacement that never started is removed, and the old container runs on under its name."""
    row = ledger.row("a replacement made beside the running old container, then a crash",
                     "the restart leaves one container under the workload's name: the new spec's, or the old one "
                     "(same id) when the spec went back")
    row.runs += 1
    port = free_port()
    workspace.write("policy.yaml", policy_yaml())
    workspace.write("web.yaml", web(port))
    assert workspace.cli("apply").returncode == 0
    old = made_beside_the_old_one(docker_engine, workspace)
    assert sorted(container.status for container in ours(docker_engine, workspace, "web")) == ["created", "running"]
    if changed:
        workspace.write("web.yaml", web(port, env={"GREETING": "hi"}))

    assert workspace.cli("apply").returncode == 0
    found = ours(docker_engine, workspace, "web")
    assert len(found) == 1 and found[0].status == "running", [(c.name, c.status) for c in found]
    assert found[0].name == f"lais-web-{owner_id(workspace.state)[:8]}"
    assert (found[0].id == old.id) is not changed
    assert ("GREETING=hi" in found[0].attrs["Config"]["Env"]) is changed
    assert wait_for(lambda: answer(port), 10, what="serving") == "hello from a container\n"
    row.passed += 1
