"""Faults at the container runtime, on a real Docker engine: the daemon SIGKILLed in the middle of recreating a
container (never two containers for one workload, not even a created one that never ran; after the last restart one
container on the last spec and no leftover), and the engine lost while the daemon runs, stopped or with its socket
removed (an explicit EngineUnavailable naming the engine, native workloads untouched, the daemon up; converged with
one container once the engine answers again)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.drive.process import owner_id
from reconciler.observe.docker_engine import OWNER_LABEL, WORKLOAD_LABEL
from reconciler.record.evidence import verify_chain
from tests.conftest import Workspace, wait_for, workload_yaml
from tests.docker_engine import EngineUnderTest
from tests.faults.conftest import Ledger, Row, runs
from tests.faults.test_kill_storm import most_processes_per_workload, whole_status_files
from tests.test_containers import container_yaml, free_port, get, ours, policy_yaml, the_container, web

CHANGING, STEADY, NATIVE = "box", "steady", "native"


# -- the daemon SIGKILLed while it recreates a container ------------------------------------------------------------


def write_round(space: Workspace, version: int) -> None:
    """A new env for the container and new args for the native workload: both must be recreated."""
    space.write(f"{CHANGING}.yaml", container_yaml(CHANGING, command=["sleep", "600"], env={"ROUND": str(version)},
                                                   terminationGracePeriodSeconds=2))
    space.write(f"{STEADY}.yaml", container_yaml(STEADY, command=["sleep", "600"]))
    space.write(f"{NATIVE}.yaml", workload_yaml(NATIVE, args=(f"v{version}",)))


def containers_per_workload(engine: EngineUnderTest, space: Workspace) -> tuple[Counter, Counter]:
    """Our containers by workload label: all (created-but-never-started and exited ones included), and the running.
    A removal the killed daemon asked for may still end meanwhile: a container gone by its inspection is not counted."""
    found = engine.client().containers.list(all=True, ignore_removed=True, filters={
        "label": f"{OWNER_LABEL}={owner_id(space.state)}"})
    return (Counter(container.labels.get(WORKLOAD_LABEL) for container in found),
            Counter(container.labels.get(WORKLOAD_LABEL) for container in found if container.status == "running"))


def on_spec(engine: EngineUnderTest, space: Workspace, version: int) -> bool:
    found = ours(engine, space, CHANGING)
    return len(found) == 1 and found[0].status == "running" and f"ROUND={version}" in found[0].attrs["Config"]["Env"]


def settled(engine: EngineUnderTest, space: Workspace, version: int) -> bool:
    native = space.resource_status(f"{NATIVE}.yaml", NATIVE) or {}
    return (on_spec(engine, space, version) and native.get("phase") == "Running"
            and f"v{version}" in " ".join(native.get("command") or [])
            and all((space.resource_status(f"{name}.yaml", name) or {}).get("phase") == "Running"
                    for name in (CHANGING, STEADY)))


def decided(space: Workspace, since: int) -> bool:
    """The daemon has written its decision about the changed container: the recreate is under way."""
    path = space.desired / f"{CHANGING}.evidence.jsonl"
    with path.open("rb") as evidence:
        evidence.seek(since)
        return b'"event":"decision"' in evidence.read()


def test_daemon_sigkilled_during_a_container_recreate_leaves_one_container_per_workload(
        workspace: Workspace, docker_engine: EngineUnderTest, ledger: Ledger) -> None:
    row = ledger.row("daemon SIGKILLed during a container recreate", "at most one running container per workload after "
                     "each kill, two in all (the old one and its replacement); status files parse; one native process "
                     "per workload")
    space, engine = workspace, docker_engine
    space.write("policy.yaml", policy_yaml())
    write_round(space, 0)
    space.start_daemon("--resync", "3600")
    wait_for(lambda: settled(engine, space, 0), timeout=60, what="every workload up before the kills")
    space.stop_daemon()
    steady = the_container(engine, space, STEADY).id

    chance = random.Random(20261124)
    rounds = runs(3, 20)
    worst = worst_running = worst_native = broken = 0
    for version in range(1, rounds + 1):
        since = (space.desired / f"{CHANGING}.evidence.jsonl").stat().st_size
        write_round(space, version)
        daemon = space.start_daemon("--resync", "3600")
        wait_for(lambda: decided(space, since), timeout=30, interval=0.005, what="the recreate decided")
        time.sleep(chance.uniform(0.0, 0.4))  # create, stop, start, remove and their records take ~0.3 s here
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
        space.stop_daemon()  # forget the killed one
        every, serving = containers_per_workload(engine, space)
        most, running = max(every.values(), default=0), max(serving.values(), default=0)
        native, torn = most_processes_per_workload(space), whole_status_files(space)
        worst, worst_running, worst_native = max(worst, most), max(worst_running, running), max(worst_native, native)
        broken += torn
        row.runs += 1
        row.passed += most <= 2 and running <= 1 and native <= 1 and torn == 0

    space.start_daemon("--resync", "3600")
    wait_for(lambda: settled(engine, space, rounds), timeout=60, what="every workload on its last version")
    assert worst_running <= 1, f"a workload had {worst_running} containers running at once after a kill"
    assert worst <= 2, f"a workload had {worst} containers at once after a kill"
    assert worst_native <= 1, f"a native workload ran {worst_native} times at once after a kill"
    assert broken == 0, f"{broken} status files did not parse after a kill"
    assert containers_per_workload(engine, space)[0] == {CHANGING: 1, STEADY: 1}, "a leftover container"
    box = the_container(engine, space, CHANGING)
    assert space.resource_status(f"{CHANGING}.yaml", CHANGING)["containerId"] == box.id
    assert the_container(engine, space, STEADY).id == steady, "the unchanged container was recreated"
    owned = {process.pid for process in space.owned_processes()}
    assert owned == {space.pid(f"{NATIVE}.yaml", NATIVE)}, f"orphans: {owned}"
    chains = sorted(space.desired.glob("*.evidence.jsonl"))
    assert space.desired / f"{CHANGING}.evidence.jsonl" in chains
    assert all(verify_chain(chain).ok for chain in chains), [str(verify_chain(chain)) for chain in chains]
    ledger.row("daemon SIGKILLed during a container recreate", f"{rounds} kills, converged after the last: one "
               "container on the last spec, the unchanged one adopted, no leftover, chains verify")


# -- the engine lost while the daemon runs --------------------------------------------------------------------------


def engine_outages(space: Workspace, engine: EngineUnderTest, row: Row, cut: Callable[[], None],
                   restore: Callable[[], None], survives: bool) -> None:
    """A container and a native workload under a running daemon; `cut` takes the engine away, `restore` brings it
    back; `survives`: the container ran on meanwhile, so the same one is adopted. Each outage is one run of `row`."""
    if engine.private is None:
        pytest.skip("the tests were given an engine (RECONCILER_TEST_DOCKER_HOST) and must not stop it")
    port = free_port()
    space.write("policy.yaml", policy_yaml())
    space.write("web.yaml", web("web", port))
    space.write(f"{NATIVE}.yaml", workload_yaml(NATIVE))
    space.start_daemon("--resync", "1")
    native = wait_for(lambda: space.pid(f"{NATIVE}.yaml", NATIVE), 30, what="the native workload")
    for _ in range(runs(1, 3)):
        wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running", 60, what="Running")
        before, logged = the_container(engine, space, "web").id, space.daemon_log.stat().st_size
        row.runs += 1
        try:
            cut()
            down = wait_for(lambda: (space.condition("web.yaml", "web") or {}).get("reason") == "EngineUnavailable"
                            and space.condition("web.yaml", "web"), 30, what="EngineUnavailable")
            assert engine.address in down["message"] and down["status"] != "True", down
            assert space.pid(f"{NATIVE}.yaml", NATIVE) == native, "the native workload was touched"
            assert space._daemon is not None and space._daemon.poll() is None, "the daemon died with the engine"
        finally:
            restore()
        wait_for(lambda: (space.resource_status("web.yaml", "web") or {}).get("phase") == "Running"
                 and (space.condition("web.yaml", "web") or {}).get("status") == "True", 60, what="Running again")
        wait_for(lambda: get(f"http://127.0.0.1:{port}/") == "hello from a container\n", 30, what="serving again")
        assert [container.status for container in ours(engine, space)] == ["running"], "not exactly one container"
        assert not survives or the_container(engine, space, "web").id == before, "a running container was replaced"
        assert space.pid(f"{NATIVE}.yaml", NATIVE) == native and space._daemon.poll() is None
        with space.daemon_log.open() as log:
            log.seek(logged)
            failed = [line for line in log if "reconcile failed" in line]
        assert not failed, f"passes failed with an unexpected error instead of saying the engine is away: {failed}"
        row.passed += 1


def test_engine_stopped_mid_run_and_restarted(workspace: Workspace, docker_engine: EngineUnderTest,
                                              ledger: Ledger) -> None:
    row = ledger.row("Docker engine stopped mid-run and restarted", "Ready False EngineUnavailable naming the engine; "
                     "native pid unchanged; daemon up; no pass failed with an unexpected error; after the restart: "
                     "Running, serving, exactly one container")
    private = docker_engine.private
    engine_outages(workspace, docker_engine, row, lambda: private.stop(), lambda: private.start(), survives=False)


def test_engine_socket_removed(workspace: Workspace, docker_engine: EngineUnderTest, ledger: Ledger) -> None:
    """dockerd runs on with its socket unlinked: no new connection gets through, but one already open does, so the
    daemon is also restarted meanwhile (crash-only) to meet the engine only as a missing socket. A hard link kept
    aside gives the same listening socket back, the container having run throughout."""
    row = ledger.row("engine socket removed", "dockerd up, its socket unlinked, the daemon SIGKILLed and restarted: "
                     "Ready False EngineUnavailable naming the engine; native pid unchanged; daemon up; socket back: "
                     "the same container adopted, no duplicate")
    socket = Path(docker_engine.address.removeprefix("unix://"))
    kept = socket.with_name("kept.sock")

    def cut() -> None:
        os.link(socket, kept)
        socket.unlink()
        workspace.stop_daemon(signal.SIGKILL)
        workspace.start_daemon("--resync", "1")

    def restore() -> None:
        if not socket.exists():
            os.link(kept, socket)
        kept.unlink(missing_ok=True)

    engine_outages(workspace, docker_engine, row, cut, restore, survives=True)
