"""The gateway running as a user of its own under a state directory it cannot pass (root's state under /root, mode
0700): its health answers, naming the routes' problem, instead of a 500 that would have it restarted forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.test_engines import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running the gateway as another user needs root")

NOBODY = 65534


def test_routes_it_cannot_reach_are_its_health_s_problem_not_a_500(tmp_path: Path) -> None:
    private = tmp_path / "home"
    (private / "state" / "gateway").mkdir(parents=True)
    (private / "state" / "gateway" / "routes.json").write_text("{}")
    private.chmod(0o700)
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "reconciler.gateway", "--port", str(port),
         "--routes", str(private / "state" / "gateway" / "routes.json")],
        user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, text=True)
    try:
        def health() -> tuple[int, dict] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                    return answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as refused:
                return refused.code, {"body": refused.read().decode()}
            except OSError:
                assert gateway.poll() is None, gateway.communicate()[0]
                return None

        status, body = wait_for(health, what="the gateway's /health")
        assert status == 200, body
        assert body["routes"].startswith(f"{private}/state/gateway/routes.json: unreadable")
        assert "Permission denied" in body["routes"]
    finally:
        gateway.terminate()
        output = gateway.communicate(timeout=10)[0]
    assert output.count("unreadable, serving the routes read before") == 1, "logged once, not on every request"
