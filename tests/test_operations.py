"""Running it like infrastructure: Prometheus metrics, JSON log lines, shell completion."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """name{labels} -> value, from the Prometheus text format."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_and_json_logs_of_the_daemon(workspace: Workspace) -> None:
    port = free_port()
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.start_daemon("--metrics-address", f"127.0.0.1:{port}")
    wait_for(lambda: workspace.pid("web.yaml", "web"), 30, what="the workload")
    wait_for(lambda: scrape(port).get('reconciler_workload_ready{workload="web"}') == 1.0, 30, what="ready metric")
    workspace.write("web.yaml", workload_yaml("web", args=("changed",)))
    wait_for(lambda: scrape(port).get("reconciler_event_to_action_seconds_count", 0) >= 1, 30, what="a latency sample")
    samples = scrape(port)
    assert samples['reconciler_actions_total{action="create",kind="Workload",result="done"}'] == 1.0
    assert samples['reconciler_actions_total{action="recreate",kind="Workload",result="done"}'] == 1.0
    assert samples['reconciler_policy_verdicts_total{decision="approve"}'] >= 2
    assert samples['reconciler_passes_total{trigger="resync"}'] >= 1
    assert samples['reconciler_passes_total{trigger="spec change"}'] >= 1
    assert samples['reconciler_reconcile_duration_seconds_count{kind="Workload"}'] >= 2
    assert samples['reconciler_workload_restarts{workload="web"}'] == 0.0
    assert samples["reconciler_model_download_bytes_total"] == 0.0
    assert 0 < samples["reconciler_event_to_action_seconds_sum"] < 30


def test_json_log_lines_name_their_resource(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    done = subprocess.run([PYTHON, "-m", "reconciler", "--log-format", "json", "apply", str(workspace.desired),
                           "--state-dir", str(workspace.state)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    about_web = [line for line in lines if line.get("resource") == "Workload/web"]
    assert about_web and "create" in about_web[0]["message"] and about_web[0]["level"] == "INFO"
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


def test_metrics_are_served_on_loopback_only(workspace: Workspace) -> None:
    refused = workspace.cli("run", "--metrics-address", "0.0.0.0:9464", timeout=30)
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr


def test_shell_completion_scripts_are_generated() -> None:
    for shell in ("bash", "zsh", "fish"):
        script = subprocess.run([PYTHON, "-m", "reconciler"], capture_output=True, text=True, timeout=30,
                                env={**os.environ, "_RECONCILER_COMPLETE": f"{shell}_source"})
        assert script.returncode == 0 and "_RECONCILER_COMPLETE" in script.stdout, (shell, script.stderr)
    words = subprocess.run([PYTHON, "-m", "reconciler"], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "_RECONCILER_COMPLETE": "bash_complete", "COMP_WORDS": "reconciler de",
                                "COMP_CWORD": "1"})
    assert "plain,describe" in words.stdout.splitlines()


def test_export_kubernetes_of_the_shipped_desired_state() -> None:
    import yaml

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([PYTHON, "-m", "reconciler", "export", "--kubernetes", str(root / "desired-state"),
                           "--namespace", "ai"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    documents = list(yaml.safe_load_all(done.stdout))
    kinds = [document["kind"] for document in documents]
    assert kinds.count("CustomResourceDefinition") == 3 and kinds.count("Deployment") == 5  # gateway, chat, qwen, hello, webui
    webui = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "webui")
    assert webui["metadata"]["namespace"] == "ai"
    assert "spec.uses[0] (gateway) is not exported: set OPENAI_API_BASE_URL" in webui["metadata"]["annotations"][
        "localaistack.dev/export-note"]
    assert webui["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/open-webui/open-webui:main"


def test_export_refuses_a_desired_state_with_errors(workspace: Workspace) -> None:
    workspace.write("bad.yaml", workload_yaml("bad", restart={"policy": "Sometimes"}))
    done = subprocess.run([PYTHON, "-m", "reconciler", "export", "--kubernetes", str(workspace.desired)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "bad.yaml:" in done.stderr and done.stdout == ""
