"""How often the daemon reconciles a key: only when asked, and never more than its pace allows whatever asks.

The worker loop is driven with stand-in reconciles (each one a bug that asks for its key again at once); the
loops found in real use are reproduced with the real daemon, real processes and a real Policy edit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from reconciler.api.meta import ResourceKey
from reconciler.control.daemon import Daemon
from reconciler.control.loop import PASS_BURST, PASSES_PER_SECOND
from reconciler.control.result import Result
from reconciler.control.workqueue import WorkQueue
from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.test_engines import free_port
from tests.test_staged_update import SERVER, proven, rollout_events, serving_version

KEY = ResourceKey("Workload", "app")
WATCHED = 2.0  # seconds each stand-in is watched


class StandIn:
    """Reconciles by counting; `then(queue, key)` is what each pass does after counting (its bug)."""

    metrics = None

    def __init__(self, then: Callable[[WorkQueue[ResourceKey], ResourceKey], Result]) -> None:
        self.passes = 0
        self.then = then
        self.queue: WorkQueue[ResourceKey] | None = None

    def reconcile(self, key: ResourceKey) -> Result:
        self.passes += 1
        assert self.queue is not None
        return self.then(self.queue, key)


def drive(then: Callable[[WorkQueue[ResourceKey], ResourceKey], Result]) -> int:
    """Passes the daemon's workers make over WATCHED seconds, its key added once."""
    stand_in = StandIn(then)
    daemon = Daemon(stand_in, workers=2)  # type: ignore[arg-type]
    stand_in.queue = daemon.loop.queue
    daemon.start_workers()
    daemon.loop.add(KEY)
    time.sleep(WATCHED)
    daemon.loop.stop()
    return stand_in.passes


PACED = PASS_BURST + PASSES_PER_SECOND * WATCHED + 1  # the most a key may be reconciled in WATCHED seconds


def test_a_reconcile_asking_for_its_key_at_once_forever_is_paced() -> None:
    assert 5 < drive(lambda queue, key: Result.after(0)) <= PACED


def test_an_event_each_pass_causes_itself_is_paced() -> None:
    def readd(queue: WorkQueue[ResourceKey], key: ResourceKey) -> Result:
        queue.add(key)  # e.g. a file the pass writes wakes a watcher that queues the key again
        return Result.until_event()

    assert 5 < drive(readd) <= PACED


def test_a_reconcile_that_always_fails_backs_off() -> None:
    def fail(queue: WorkQueue[ResourceKey], key: ResourceKey) -> Result:
        raise RuntimeError("a bug")

    assert drive(fail) <= 3  # at 0, 0.5 and 1.5 s


def test_a_stable_state_is_not_reconciled_again_until_an_event() -> None:
    assert drive(lambda queue, key: Result.until_event()) == 1


def test_a_result_cannot_be_a_negative_or_endless_wait() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            Result(bad)
    assert Result.soonest(None, 3.0, 1.5) == Result(1.5) and Result.soonest(None, None) == Result.until_event()


# -- the real daemon ---------------------------------------------------------------------------------------------

def policy(trusted: bool, **spec: Any) -> str:
    executables = [{"executable": PYTHON}] if trusted else []
    body = {"apiVersion": "localaistack.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "test-host"},
            "spec": {"native": {"trustedExecutables": executables}, **spec}}
    return yaml.safe_dump(body, sort_keys=False)


def passes_logged(workspace: Workspace, text: str) -> int:
    return sum(text in line for line in workspace.daemon_log.read_text().splitlines())


def status(workspace: Workspace) -> dict[str, Any]:
    return workspace.resource_status("app.yaml", "app") or {}


def quiet_for(workspace: Workspace, text: str, seconds: float = 3.0, settle: float = 1.0) -> int:
    """How many more passes log `text` over `seconds`, counted from `settle` seconds on: the passes a stop itself
    causes (its exit, the sockets it closed) land in its first moments (three seen within 0.25 s), while a loop
    runs at the token bucket's 5 a second for as long as it lasts."""
    time.sleep(settle)
    before = passes_logged(workspace, text)
    time.sleep(seconds)
    return passes_logged(workspace, text) - before


@pytest.mark.parametrize("refused", ["Denied", "PendingApproval"])
def test_a_crashed_workload_whose_restart_the_policy_refuses_is_not_reconciled_in_a_loop(workspace: Workspace,
                                                                                         refused: str) -> None:
    crash = "import sys; print('crashing', flush=True); sys.exit(3)"
    workspace.write("app.yaml", workload_yaml("app", crash, restart={"policy": "Always", "backoff": {"initialSeconds": 2}}))
    workspace.start_daemon("--resync", "3600")
    wait_for(lambda: status(workspace).get("phase") == "BackOff", timeout=10, what="the crash's back-off")
    tightened = policy(trusted=False) if refused == "Denied" else \
        policy(trusted=True, approvals={"required": ["NativeExecutable"]})
    workspace.write("policy.yaml", tightened)
    wait_for(lambda: status(workspace).get("phase") == refused, timeout=10, what="the refused restart")
    assert quiet_for(workspace, "Workload/app: create") < 3, "a refused start is a stable state until an input changes"
    if refused == "Denied":
        assert status(workspace).get("nextRetryTime") is None

    workspace.write("policy.yaml", policy(trusted=True))  # an input changed: it is judged (and started) again
    wait_for(lambda: status(workspace).get("restartCount", 0) >= 1, timeout=10, what="the restart once allowed")


def app(port: int, version: str, soak: float) -> str:
    return workload_yaml(
        "app", SERVER, (str(port), version),
        health={"http": {"path": "/", "port": port}, "periodSeconds": 0.3, "failureThreshold": 1},
        update={"progressDeadlineSeconds": 10, "soakSeconds": soak, "rollback": "Auto"},
    )


def spec_hash(workspace: Workspace) -> str:
    plans = json.loads(workspace.cli("plan", "-o", "json").stdout)
    return next(row["specHash"] for row in plans if row["resource"] == "Workload/app")


@pytest.mark.parametrize("approvals", [False, True], ids=["no-approvals", "approvals-required"])
def test_a_policy_stop_while_soaking_is_no_failed_update_and_loosening_runs_the_spec(workspace: Workspace,
                                                                                     approvals: bool) -> None:
    required = {"approvals": {"required": ["NativeExecutable"]}} if approvals else {}
    port = free_port()
    workspace.write("policy.yaml", policy(trusted=True, **required))
    workspace.write("app.yaml", app(port, "v1", soak=1))
    if approvals:
        assert workspace.cli("approve", "app", "--spec-hash", spec_hash(workspace)).returncode == 0
    workspace.start_daemon("--resync", "3600")
    wait_for(lambda: proven(workspace, 1), timeout=20, what="v1 proven")

    workspace.write("app.yaml", app(port, "v2", soak=600))
    if approvals:
        assert workspace.cli("approve", "app", "--spec-hash", spec_hash(workspace)).returncode == 0
    wait_for(lambda: (status(workspace).get("rollout") or {}).get("state") == "Soaking" and serving_version(workspace) == "v2",
             timeout=20, what="v2 soaking")

    workspace.write("policy.yaml", policy(trusted=False, **required))
    wait_for(lambda: status(workspace).get("phase") == "Denied", timeout=10, what="v2 stopped by the policy")
    assert quiet_for(workspace, "Workload/app: create") < 3, "a refused start is a stable state until an input changes"
    outcomes = [event["outcome"] for event in rollout_events(workspace)]
    assert "rolled-back" not in outcomes and "failed" not in outcomes, "a stop by the Policy is not a failed update"
    assert status(workspace)["phase"] == "Denied" and serving_version(workspace) is None

    workspace.write("policy.yaml", policy(trusted=True, **required))
    wait_for(lambda: serving_version(workspace) == "v2", timeout=20, what="the spec as written (v2) running again")
    shown = status(workspace)
    assert shown["phase"] != "RolledBack" and shown["generation"] == 2
    assert (shown.get("rollout") or {}).get("generation") == 2
