"""Readiness is not liveness: a UI whose readiness check calls its backend is not Ready while the backend is down,
and says why, but it is not restarted, and its update is not judged failed for it. Real daemon, real processes."""

from __future__ import annotations

import os
import signal

from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.test_containers import free_port

# An HTTP server on argv[1]: /health answers for itself; /ready asks the backend on argv[2] first (a UI's check).
UI = """import sys, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200
        if self.path == '/ready':
            try:
                urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[2]}/', timeout=1).read()
            except OSError:
                code = 503
        self.send_response(code); self.end_headers(); self.wfile.write(b'backend down' if code == 503 else b'ok')
    def log_message(self, *args): pass
HTTPServer(('127.0.0.1', int(sys.argv[1])), Handler).serve_forever()
"""
BACKEND = "import http.server, sys; http.server.test(http.server.SimpleHTTPRequestHandler, port=int(sys.argv[1]), bind='127.0.0.1')"
FAST = {"periodSeconds": 0.2, "failureThreshold": 1}


def ui_yaml(port: int, backend: int, *extra: str) -> str:
    return workload_yaml("ui", UI, (str(port), str(backend), *extra), port=port,
                         health={"http": {"path": "/health"}, **FAST}, readiness={"http": {"path": "/ready"}, **FAST},
                         update={"progressDeadlineSeconds": 3, "soakSeconds": 1, "rollback": "Auto"})


def test_a_ui_whose_backend_is_down_is_not_ready_and_not_restarted_and_its_update_is_not_failed(
        workspace: Workspace) -> None:
    ui_port, backend_port = free_port(), free_port()
    workspace.write("backend.yaml", workload_yaml("backend", BACKEND, (str(backend_port),), port=backend_port,
                                                  restart={"policy": "Never"}, health={"tcp": {}, **FAST}))
    workspace.write("ui.yaml", ui_yaml(ui_port, backend_port))
    workspace.start_daemon()
    wait_for(lambda: (c := workspace.condition("ui.yaml", "ui")) and c["status"] == "True", timeout=30, what="ui Ready")
    wait_for(lambda: (s := workspace.resource_status("ui.yaml", "ui")) and s.get("rollout", {}).get("state") == "Proven",
             timeout=30, what="the first version proven")
    ui_pid = workspace.pid("ui.yaml", "ui")

    os.kill(workspace.pid("backend.yaml", "backend"), signal.SIGKILL)  # restart policy Never: it stays down
    not_ready = wait_for(lambda: (c := workspace.condition("ui.yaml", "ui")) and c["status"] == "False" and c,
                         timeout=30, what="ui not Ready")
    assert not_ready["reason"] == "NotReady" and "/ready: 503" in not_ready["message"], not_ready
    workspace.write("ui.yaml", ui_yaml(ui_port, backend_port, "v2"))  # an update while its backend is down
    rollout = wait_for(lambda: (s := workspace.resource_status("ui.yaml", "ui"))["generation"] == 2
                       and s.get("rollout", {}).get("state") in ("Proven", "Failed", "RolledBack") and s["rollout"],
                       timeout=30, what="the update judged")
    assert rollout["state"] == "Proven", rollout
    status = workspace.resource_status("ui.yaml", "ui")
    assert status["phase"] == "Running" and status["restartCount"] == 0, status
    v2_pid = status["pid"]
    assert v2_pid != ui_pid, "the update ran"
    wait_for(lambda: workspace.condition("ui.yaml", "ui")["reason"] == "NotReady", timeout=10, what="v2 not ready")
    assert workspace.pid("ui.yaml", "ui") == v2_pid and workspace.resource_status("ui.yaml", "ui")["restartCount"] == 0
    assert not workspace.resource_status("ui.yaml", "ui").get("endpoints"), "no traffic while not Ready"


def test_an_exec_check_sees_the_address_uses_gives_the_process(workspace: Workspace) -> None:
    """The check runs as the workload would, with what its launch was given: a check that reads $BACKEND (set by
    `uses`, not in spec.env) passes: the workload is Ready and never restarted for it."""
    backend_port = free_port()
    workspace.write("backend.yaml", workload_yaml("backend", BACKEND, (str(backend_port),), port=backend_port,
                                                  health={"tcp": {}, **FAST}))
    sees_backend = {"exec": {"command": [PYTHON, "-c", "import os, sys; sys.exit(0 if os.environ.get('BACKEND') "
                                                          "and os.environ.get('MINE') == 'kept' else 3)"]}, **FAST}
    workspace.write("ui.yaml", workload_yaml("ui", "import time; time.sleep(3600)", uses=[{"workload": "backend",
                                             "env": "BACKEND"}], env={"MINE": "kept"}, health=sees_backend))
    workspace.start_daemon()
    ready = wait_for(lambda: (c := workspace.condition("ui.yaml", "ui")) and (c["status"] == "True" or "exited 3" in
                                                                               c["message"]) and c,
                     timeout=30, what="ui Ready, or its check failed")
    assert ready["status"] == "True", ready
    assert workspace.resource_status("ui.yaml", "ui")["restartCount"] == 0
