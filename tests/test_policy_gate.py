"""The policy gate end to end: approvals, audit mode, tightening, exposure, pins, memory, hosted fallback, host profile."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import psutil
import yaml

from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml

SECRET = "sk-test-NEVER-SHOWN-4f9c2a"


def policy_yaml(**spec: object) -> str:
    body = {"apiVersion": "localaistack.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "test-host"},
            "spec": {"native": {"trustedExecutables": [{"executable": PYTHON}]}, **spec}}
    return yaml.safe_dump(body, sort_keys=False)


def plan_row(workspace: Workspace, resource: str) -> dict:
    return next(row for row in json.loads(workspace.cli("plan", "-o", "json").stdout) if row["resource"] == resource)


def test_a_change_that_needs_a_person_waits_until_its_exact_spec_is_approved(workspace: Workspace) -> None:
    workspace.write("policy.yaml", policy_yaml(approvals={"required": ["AnyChange"]}))
    workspace.write("web.yaml", workload_yaml("web", args=("one",)))
    row = plan_row(workspace, "Workload/web")
    assert row["decision"] == "needs-approval" and "reconciler approve web --spec-hash" in row["reasons"][0]
    workspace.cli("apply")
    assert not workspace.owned_processes("web")
    approved = workspace.condition("web.yaml", "web", "PolicyApproved")
    assert (approved["status"], approved["reason"]) == ("False", "PendingApproval")
    assert workspace.resource_status("web.yaml", "web")["phase"] == "PendingApproval"

    stale = workspace.cli("approve", "web", "--spec-hash", "0123456789ab")
    assert stale.returncode == 1 and "it changed since you looked" in stale.stderr
    assert workspace.cli("approve", "web", "--spec-hash", row["specHash"][:12]).returncode == 0
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    assert pid and psutil.pid_exists(pid)
    decision = [r for r in workspace.evidence("web.yaml") if r["event"] == "decision" and r["decision"] == "approve"][-1]
    assert any("AnyChange: approved by" in reason for reason in decision["reasons"]), decision

    workspace.write("web.yaml", workload_yaml("web", args=("two",)))  # a later edit needs a new approval
    workspace.cli("apply")
    assert workspace.pid("web.yaml", "web") == pid, "the approved version keeps running while the edit waits"
    assert plan_row(workspace, "Workload/web")["decision"] == "needs-approval"
    assert workspace.cli("deny", "web").returncode == 0
    workspace.cli("apply")
    assert workspace.condition("web.yaml", "web", "PolicyApproved")["reason"] == "Denied"
    assert "approvals.answer: this spec was denied by" in workspace.condition("web.yaml", "web", "PolicyApproved")["message"]


def test_an_approval_reaches_a_running_daemon_at_once(workspace: Workspace) -> None:
    workspace.write("policy.yaml", policy_yaml(approvals={"required": ["NativeExecutable"]}))
    workspace.write("web.yaml", workload_yaml("web"))
    spec_hash = plan_row(workspace, "Workload/web")["specHash"]
    daemon = psutil.Process(workspace.start_daemon("--resync", "3600").pid)
    wait_for(lambda: (workspace.resource_status("web.yaml", "web") or {}).get("phase") == "PendingApproval",
             what="the pending approval")
    assert workspace.cli("approve", "web", "--spec-hash", spec_hash[:12]).returncode == 0
    assert wait_for(lambda: workspace.pid("web.yaml", "web"), timeout=5, what="the approved start")
    busy = daemon.cpu_times()
    time.sleep(2)
    spent = sum(daemon.cpu_times()[:2]) - sum(busy[:2])
    assert spent < 0.5, f"an idle daemon spent {spent:.2f} s of CPU in 2 s: reading an answer must not wake it again"


def test_audit_mode_applies_and_records_what_enforce_would_refuse(workspace: Workspace) -> None:
    workspace.write("policy.yaml", policy_yaml(mode="audit", native={"trustedExecutables": []}))
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    assert workspace.pid("web.yaml", "web")
    approved = workspace.condition("web.yaml", "web", "PolicyApproved")
    assert (approved["status"], approved["reason"]) == ("True", "Audited")
    assert "enforce would refuse: native.trustedExecutables" in approved["message"]
    decision = next(r for r in workspace.evidence("web.yaml") if r["event"] == "decision")
    assert decision["decision"] == "approve" and "not trusted by Policy/test-host" in decision["auditedDenials"][0]


def test_a_tightened_policy_stops_what_it_now_refuses_and_keeps_it_stopped(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    workspace.write("policy.yaml", policy_yaml(native={"trustedExecutables": [{"executable": "/usr/bin/true"}]}))
    workspace.cli("apply")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    stop = next(r for r in workspace.evidence("web.yaml") if r.get("action") == "stop" and r["event"] == "decision")
    assert stop["cause"].startswith("stopped: Policy/test-host no longer allows what runs: native.trustedExecutables")
    workspace.cli("apply")
    assert not workspace.owned_processes("web"), "a refused workload is not restarted"
    ready = workspace.condition("web.yaml", "web")
    assert ready["reason"] == "PolicyDenied"


def test_an_invalid_policy_keeps_the_last_valid_one_in_force(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    workspace.write("policy.yaml", policy_yaml(mode="lenient"))
    workspace.cli("apply")
    assert workspace.pid("web.yaml", "web") == pid and psutil.pid_exists(pid), "never 'allow all', never 'deny all'"
    accepted = workspace.condition("policy.yaml", "test-host", "Accepted")
    assert accepted["reason"] == "Rejected" and "spec.mode" in accepted["message"]


def test_an_engine_bind_beyond_loopback_needs_the_policy(workspace: Workspace) -> None:
    exposed = workload_yaml("web", args=("8123",), host="0.0.0.0", port=8123)
    workspace.write("web.yaml", exposed)
    row = plan_row(workspace, "Workload/web")
    assert row["decision"] == "deny" and row["reasons"][0].startswith("network.exposed: the server would listen on 0.0.0.0")
    workspace.write("policy.yaml", policy_yaml(network={"exposed": [{"address": "0.0.0.0", "ports": [8123]}]}))
    assert plan_row(workspace, "Workload/web")["decision"] == "approve"


def test_a_pinned_executable_runs_only_while_its_digest_matches(workspace: Workspace, tmp_path: Path) -> None:
    real = os.path.realpath(PYTHON)
    digest = hashlib.sha256(Path(real).read_bytes()).hexdigest()
    workspace.write("policy.yaml", policy_yaml(native={"trustedExecutables": [{"executable": PYTHON, "sha256": "0" * 64}]}))
    workspace.write("web.yaml", workload_yaml("web"))
    row = plan_row(workspace, "Workload/web")
    assert row["decision"] == "deny" and f"has sha256 {digest}, not the pinned {'0' * 64}" in row["reasons"][0]
    workspace.write("policy.yaml", policy_yaml(native={"trustedExecutables": [{"executable": PYTHON, "sha256": digest}]}))
    assert plan_row(workspace, "Workload/web")["decision"] == "approve"


def test_memory_is_not_overcommitted(workspace: Workspace) -> None:
    total = psutil.virtual_memory().total
    share = f"{int(total * 0.5) // 2 ** 20}Mi"  # two of these exceed 90% of RAM; one fits
    workspace.write("a.yaml", workload_yaml("a", resources={"memory": share}))
    workspace.write("b.yaml", workload_yaml("b", resources={"memory": share}))
    workspace.cli("apply", "--wait")
    running = [name for name in ("a", "b") if workspace.pid(f"{name}.yaml", name)]
    assert running == ["a"], running
    ready = workspace.condition("b.yaml", "b")
    assert ready["reason"] == "PolicyDenied" and "resources.memory: memory limit" in ready["message"]
    assert "committed by running workloads exceeds" in ready["message"]


def _fallback_workload(**fallback: object) -> str:
    return workload_yaml("chat", resources={"gpus": {"count": 1}}, fallback={
        "provider": "acme", "baseUrl": "https://api.acme.example/v1", "model": "big-1", "region": "eu",
        "context": ["prompts", "completions"], "apiKey": {"env": "ACME_KEY"}, **fallback})


def test_hosted_fallback_needs_an_allowed_provider_a_key_and_consent(workspace: Workspace) -> None:
    env = {**os.environ, "ACME_KEY": SECRET}
    workspace.write("chat.yaml", _fallback_workload())
    workspace.cli("apply", env=env)
    status = workspace.resource_status("chat.yaml", "chat")
    assert status["placement"] == "unavailable" and status["conditions"][-1]["reason"] == "ProviderNotAllowed"

    provider = {"name": "acme", "regions": ["eu"], "baseUrls": ["https://api.acme.example"]}
    workspace.write("policy.yaml", policy_yaml(hosted={"providers": [provider]}))
    workspace.cli("apply", env={**os.environ, "ACME_KEY": ""})
    assert workspace.condition("chat.yaml", "chat")["reason"] == "SecretMissing"
    workspace.cli("apply", env=env)
    status = workspace.resource_status("chat.yaml", "chat")
    assert status["placement"] == "unavailable" and status["phase"] == "PendingApproval"
    assert "needs 1 NVIDIA GPU" in workspace.decision_record("chat.yaml", "chat")["placement"]["message"]

    spec_hash = plan_row(workspace, "Workload/chat")["specHash"]
    assert workspace.cli("approve", "chat", "--spec-hash", spec_hash).returncode == 0  # a local start's approval...
    workspace.cli("apply", env=env)
    assert workspace.resource_status("chat.yaml", "chat")["placement"] == "unavailable", "...is not consent to hosting"
    assert workspace.cli("approve", "chat", "--hosted", "--spec-hash", spec_hash).returncode == 0
    workspace.cli("apply", env=env)
    status = workspace.resource_status("chat.yaml", "chat")
    assert (status["placement"], status["phase"], status["endpoints"]) == ("hosted", "Hosted", ["https://api.acme.example/v1"])
    assert not workspace.owned_processes("chat"), "nothing runs locally for a hosted placement"
    questions = workspace.decision_record("chat.yaml", "chat")["questions"]
    assert "prompts, completions" in questions["remoteFallbackConsent"]["tradeOff"]
    assert "ACME_KEY" in questions["localSecretStorage"]["constraint"]

    plan = workspace.cli("plan", "-o", "json", env=env).stdout
    shown = workspace.cli("describe", "chat", env=env).stdout + workspace.cli("status", "-o", "yaml", env=env).stdout
    written = "".join(path.read_text() for path in workspace.desired.iterdir() if path.is_file())
    state = "".join(path.read_text(errors="replace") for path in workspace.state.rglob("*") if path.is_file())
    for text in (plan, shown, written, state):
        assert SECRET not in text


def test_consent_may_be_waived_by_the_policy_but_never_by_audit_mode(workspace: Workspace) -> None:
    env = {**os.environ, "ACME_KEY": SECRET}
    provider = {"name": "acme", "regions": ["*"]}
    workspace.write("chat.yaml", _fallback_workload())
    workspace.write("policy.yaml", policy_yaml(mode="audit", hosted={"providers": [provider]}))
    workspace.cli("apply", env=env)
    assert workspace.resource_status("chat.yaml", "chat")["placement"] == "unavailable"
    workspace.write("policy.yaml", policy_yaml(hosted={"providers": [{**provider, "consentRequired": False}]}))
    workspace.cli("apply", env=env)
    assert workspace.resource_status("chat.yaml", "chat")["placement"] == "hosted"
    records = [r for r in workspace.evidence("chat.yaml") if r["event"] == "decision-record"]
    assert [r["record"]["placement"]["placement"] for r in records] == ["unavailable", "hosted"]


def test_an_inline_api_key_is_refused_without_being_repeated(workspace: Workspace) -> None:
    workspace.write("chat.yaml", _fallback_workload(apiKey=SECRET))
    result = workspace.cli("validate")
    assert result.returncode == 1 and "spec.fallback.apiKey" in result.stderr + result.stdout
    assert SECRET not in result.stderr + result.stdout
    workspace.cli("apply")
    assert SECRET not in (workspace.desired / "chat.status.yaml").read_text()


def test_the_host_profile_is_published_and_cited_by_decisions(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    profile = yaml.safe_load((workspace.desired / "host-profile.status.yaml").read_text())
    assert profile["kind"] == "HostProfile" and profile["status"]["memory"]["total"] == psutil.virtual_memory().total
    digest = profile["status"]["capabilityDigest"]
    decision = next(r for r in workspace.evidence("web.yaml") if r["event"] == "decision")
    assert decision["hostProfile"] == digest
    shown = json.loads(workspace.cli("host", "-o", "json").stdout)
    assert shown["cpu"]["logicalCores"] == psutil.cpu_count() and "reason" in shown["gpus"]
    workspace.cli("apply")
    assert (workspace.desired / "host-profile.status.yaml").exists(), "not swept as an orphan status file"


def test_shareable_workloads_share_a_gpu_only_when_the_policy_allows_and_memory_fits(workspace: Workspace, tmp_path: Path) -> None:
    inventory = tmp_path / "gpus.json"
    inventory.write_text(json.dumps([{"index": 0, "name": "NVIDIA Fake 80GB", "memoryTotal": 80 * 2 ** 30}]))
    env = {**os.environ, "RECONCILER_FAKE_GPUS": str(inventory)}
    share = {"gpus": {"count": 1, "minMemory": "30Gi", "shareable": True}}
    for name in ("a", "b", "c"):
        workspace.write(f"{name}.yaml", workload_yaml(name, resources=share))
    workspace.cli("apply", env=env)
    first = [name for name in "abc" if workspace.pid(f"{name}.yaml", name)]
    assert len(first) == 1, "GPUs stay exclusive unless the policy allows sharing"
    waiting = [workspace.condition(f"{name}.yaml", name) for name in "abc" if name not in first]
    assert all(ready["reason"] == "InsufficientGPUs" for ready in waiting), waiting

    workspace.write("policy.yaml", policy_yaml(resources={"gpuSharing": True}))
    workspace.cli("apply", env=env)
    running = [name for name in "abc" if workspace.pid(f"{name}.yaml", name)]
    assert len(running) == 2, "two of 30Gi fit the 80Gi GPU; a third would not"
    assert all(workspace.resource_status(f"{name}.yaml", name)["gpus"] == [0] for name in running)
    (waiting,) = set("abc") - set(running)
    ready = workspace.condition(f"{waiting}.yaml", waiting)
    assert ready["reason"] == "InsufficientGPUs" and "sharing it, 60Gi of 80Gi in use" in ready["message"]


def test_a_deny_is_never_silently_ignored(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    assert workspace.cli("deny", "web").returncode == 0  # the policy asks for no answer; this one still counts
    workspace.cli("apply")
    assert not workspace.owned_processes("web")
    assert workspace.condition("web.yaml", "web", "PolicyApproved")["reason"] == "Denied"


def test_approving_needs_the_hash_that_was_reviewed(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    result = workspace.cli("approve", "web")
    assert result.returncode == 2 and "--spec-hash" in result.stderr


def test_a_policy_missing_for_a_moment_stops_nothing(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.start_daemon("--resync", "3600")
    pid = wait_for(lambda: workspace.pid("web.yaml", "web"), what="web to start")
    policy = (workspace.desired / "policy.yaml").read_text()
    (workspace.desired / "policy.yaml").unlink()  # a checkout removes, then writes again
    time.sleep(1.0)
    workspace.write("policy.yaml", policy)
    time.sleep(1.0)
    assert psutil.pid_exists(pid) and workspace.pid("web.yaml", "web") == pid


def test_state_written_by_the_previous_version_still_reads(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    record = workspace.state / "resources" / "Policy.test-host.json"
    stored = json.loads(record.read_text())
    stored["resource"]["spec"]["containers"] = {"images": [], "exposedAddresses": ["0.0.0.0"]}  # its old shape
    record.write_text(json.dumps(stored))
    workspace.write("policy.yaml", policy_yaml(approvals={"required": ["Privilege"]}))
    result = workspace.cli("apply")
    assert result.returncode == 0, result.stderr
    assert workspace.pid("web.yaml", "web") == pid and psutil.pid_exists(pid)


def test_while_an_update_waits_ready_and_endpoints_describe_the_version_that_serves(workspace: Workspace) -> None:
    from tests.test_engines import free_port
    from tests.test_staged_update import SERVER

    first, moved = free_port(), free_port()
    workspace.write("policy.yaml", policy_yaml(approvals={"required": ["NativeExecutable"]}))
    workspace.write("web.yaml", workload_yaml("web", SERVER, (str(first),), port=first, health={"http": {"path": "/"}}))
    assert workspace.cli("approve", "web", "--spec-hash", plan_row(workspace, "Workload/web")["specHash"]).returncode == 0
    assert workspace.cli("apply", "--wait").returncode == 0
    serving = workspace.pid("web.yaml", "web")

    workspace.write("web.yaml", workload_yaml("web", SERVER, (str(moved),), port=moved, health={"http": {"path": "/"}}))
    workspace.cli("apply")
    shown = workspace.resource_status("web.yaml", "web")
    assert shown["pid"] == serving and shown["phase"] == "PendingApproval"
    assert shown["endpoints"] == [f"http://127.0.0.1:{first}"], "where the approved version serves, not the edit"
    ready = workspace.condition("web.yaml", "web")
    assert ready["status"] == "True" and "the update waits for approval" in ready["message"], ready
    assert workspace.condition("web.yaml", "web", "PolicyApproved")["reason"] == "PendingApproval"


def test_a_denied_workloads_status_and_decision_record_agree_on_its_placement(workspace: Workspace) -> None:
    workspace.write("policy.yaml", policy_yaml(native={"trustedExecutables": []}))
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply")
    shown = workspace.resource_status("web.yaml", "web")
    assert shown["phase"] == "Denied" and shown["placement"] == "unavailable"
    placement = workspace.decision_record("web.yaml", "web")["placement"]
    assert placement["placement"] == "unavailable" and "the policy does not allow it to run here" in placement["message"]
