"""Staged updates with real processes and the real daemon: a known-good version is remembered once it stayed
healthy, a failing update is rolled back to it (Auto) or shown with what would be restored (Manual), and a
rolled-back generation is not retried until the spec changes again."""

from __future__ import annotations

import json
import time
from typing import Any

import psutil
import pytest

from tests.conftest import Workspace, wait_for, workload_yaml
from tests.test_engines import free_port

SERVER = ("import http.server, sys\n"
          "print('serving', sys.argv[1:], flush=True)\n"
          "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()")
BROKEN = "import sys, time\nprint('broken build: not listening', sys.argv[1:], flush=True)\nwhile True: time.sleep(1)"


def app(port: int, code: str, version: str, rollback: str) -> str:
    return workload_yaml(
        "app", code, (str(port), version),
        health={"http": {"path": "/", "port": port}, "periodSeconds": 0.3, "failureThreshold": 1},
        update={"progressDeadlineSeconds": 3, "soakSeconds": 1, "rollback": rollback},
    )


def status(workspace: Workspace) -> dict[str, Any]:
    return workspace.resource_status("app.yaml", "app") or {}


def rollout_events(workspace: Workspace) -> list[dict[str, Any]]:
    return [line for line in workspace.evidence("app.yaml") if line["event"] == "rollout"]


def serving_version(workspace: Workspace) -> str | None:
    pid = status(workspace).get("pid")
    try:
        return psutil.Process(pid).cmdline()[-1] if pid else None
    except psutil.NoSuchProcess:
        return None


def proven(workspace: Workspace, generation: int) -> bool:
    return any(e["outcome"] == "proven" and e["generation"] == generation for e in rollout_events(workspace))


@pytest.fixture
def port() -> int:
    return free_port()


def test_a_failing_update_is_rolled_back_to_the_known_good_version_and_not_retried(workspace: Workspace, port: int) -> None:
    workspace.write("app.yaml", app(port, SERVER, "v1", "Auto"))
    workspace.start_daemon("--resync", "3600")
    wait_for(lambda: proven(workspace, 1), timeout=20, what="v1 proven after its soak")
    wait_for(lambda: (status(workspace).get("rollout") or {}).get("state") == "Proven", timeout=5, what="status says so")

    workspace.write("app.yaml", app(port, BROKEN, "v2", "Auto"))
    wait_for(lambda: status(workspace).get("phase") == "RolledBack" and serving_version(workspace) == "v1",
             timeout=20, what="v2 rolled back to v1")
    shown = status(workspace)
    assert shown["generation"] == 2 and shown["rollout"]["state"] == "RolledBack"
    assert shown["rollout"]["knownGoodGeneration"] == 1
    assert "generation 2 was rolled back by the reconciler: not Ready within 3s" in shown["message"]
    failed = next(e for e in rollout_events(workspace) if e["outcome"] == "failed")
    assert failed["generation"] == 2 and failed["reason"] == "ProgressDeadlineExceeded"
    assert any("broken build: not listening" in line for line in failed["logTail"]), failed
    assert failed["health"], failed  # the probe's own words
    rolled = next(e for e in rollout_events(workspace) if e["outcome"] == "rolled-back")
    assert rolled["restores"]["generation"] == 1
    wait_for(lambda: workspace.condition("app.yaml", "app")["status"] == "True", timeout=10, what="v1 Ready again")

    # no flapping: v1 keeps running, v2 is not started again while the spec stays as it is
    pid, starts = status(workspace)["pid"], workspace.actions("app.yaml").count("create") + workspace.actions("app.yaml").count("recreate")
    time.sleep(4)  # longer than v2's deadline and v1's soak
    assert status(workspace)["pid"] == pid and serving_version(workspace) == "v1"
    assert workspace.actions("app.yaml").count("create") + workspace.actions("app.yaml").count("recreate") == starts
    assert [e["outcome"] for e in rollout_events(workspace)].count("rolled-back") == 1

    # a new spec is tried, proven, and becomes the known-good one
    workspace.write("app.yaml", app(port, SERVER, "v3", "Auto"))
    wait_for(lambda: proven(workspace, 3), timeout=20, what="v3 proven")
    assert serving_version(workspace) == "v3"
    wait_for(lambda: (status(workspace).get("rollout") or {}).get("knownGoodGeneration") == 3, timeout=5, what="status")
    rollout = status(workspace)["rollout"]
    assert (rollout["generation"], rollout["state"], rollout["knownGoodGeneration"]) == (3, "Proven", 3)


def test_manual_rollback_shows_the_known_good_and_restores_it_on_demand(workspace: Workspace, port: int) -> None:
    workspace.write("app.yaml", app(port, SERVER, "v1", "Manual"))
    workspace.start_daemon("--resync", "3600")
    wait_for(lambda: proven(workspace, 1), timeout=20, what="v1 proven")
    same = workspace.cli("rollback", "app")
    assert same.returncode == 1 and "its spec is the known-good version (generation 1) already" in same.stderr

    workspace.write("app.yaml", app(port, BROKEN, "v2", "Manual"))
    wait_for(lambda: (status(workspace).get("rollout") or {}).get("state") == "Failed", timeout=20, what="v2 failed")
    rollout = status(workspace)["rollout"]
    assert "`reconciler rollback app` restores the known-good generation 1" in rollout["message"], rollout
    assert serving_version(workspace) == "v2", "Manual: nothing is restored without a person"
    described = workspace.cli("describe", "app").stdout  # read-only: as last judged, no clock run
    assert "Rollout:" in described and "generation 2 Failed: ProgressDeadlineExceeded" in described, described
    assert "(known-good generation 1; rollback Manual)" in described
    listed = json.loads(workspace.cli("status", "-o", "json").stdout)
    assert next(row for row in listed if row["name"] == "app")["status"]["rollout"]["state"] == "Failed"

    answered = workspace.cli("rollback", "app")
    assert answered.returncode == 0 and "known-good generation 1" in answered.stdout, answered.stderr
    wait_for(lambda: status(workspace).get("phase") == "RolledBack" and serving_version(workspace) == "v1",
             timeout=10, what="the daemon to restore v1 at once")
    rolled = next(e for e in rollout_events(workspace) if e["outcome"] == "rolled-back")
    assert rolled["reason"] == "RollbackRequested" and rolled["by"] != "the reconciler"
    assert "generation 2 RolledBack" in workspace.cli("describe", "app").stdout
    wait_for(lambda: not (workspace.state / "approvals" / "app.rollback.json").exists(), timeout=5,
             what="the request cleared once the rollback is on record")
    assert workspace.cli("rollback", "app").returncode == 1  # already rolled back


def test_rollback_without_a_known_good_version_is_refused(workspace: Workspace, port: int) -> None:
    workspace.write("app.yaml", app(port, BROKEN, "v1", "Auto"))
    workspace.cli("apply")
    refused = workspace.cli("rollback", "app")
    assert refused.returncode == 1 and "no known-good version on record" in refused.stderr
    workspace.cli("down")
