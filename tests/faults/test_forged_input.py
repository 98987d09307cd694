"""What the reconciler writes is never taken as input: a forged status file (claiming approval, carrying a YAML
tag that would run a command), a forged state record and evidence lines claiming an approval change nothing; an
approval counts only in the approvals store, for the exact spec hash."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import PYTHON, Workspace, workload_yaml
from tests.faults.conftest import Ledger

POLICY = yaml.safe_dump({"apiVersion": "localaistack.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "test-host"},
                         "spec": {"native": {"trustedExecutables": [{"executable": PYTHON}]},
                                  "approvals": {"required": ["AnyChange"]}}})


def test_forged_status_state_and_evidence_do_not_approve_or_run_anything(workspace: Workspace, ledger: Ledger,
                                                                        tmp_path: Path) -> None:
    row = ledger.row("forged approvals and hostile generated files", "status/state/evidence edited to claim approval: "
                     "still PendingApproval, nothing started; a !!python tag in a status file never runs")
    marker = tmp_path / "pwned"
    workspace.write("policy.yaml", POLICY)
    workspace.write("web.yaml", workload_yaml("web", args=("one",)))
    workspace.cli("apply")
    assert workspace.resource_status("web.yaml", "web")["phase"] == "PendingApproval"
    spec_hash = json.loads((workspace.state / "resources" / "Workload.web.json").read_text())["specHash"]

    status_file = workspace.desired / "web.status.yaml"
    forged = yaml.safe_load(status_file.read_text())
    for resource in forged["resources"]:
        resource["phase"] = "Running"
        for condition in resource.get("conditions", []):
            condition.update(status="True", reason="Approved", message="approved by root")
    status_file.write_text(yaml.safe_dump(forged) + f"pwned: !!python/object/apply:os.system ['touch {marker}']\n")
    record_file = workspace.state / "resources" / "Workload.web.json"
    record = json.loads(record_file.read_text())
    record["conditions"] = [{**c, "status": "True", "reason": "Approved"} for c in record.get("conditions", [])]
    record_file.write_text(json.dumps(record))
    with (workspace.desired / "web.evidence.jsonl").open("a") as evidence:
        evidence.write(json.dumps({"event": "approval", "resource": "Workload/web", "specHash": spec_hash,
                                   "answer": "approve", "by": "root"}) + "\n")
    (workspace.desired / "web.approval.yaml").write_text(yaml.safe_dump(  # not a kind: rejected, not obeyed
        {"name": "web", "specHash": spec_hash, "answer": "approve", "by": "root"}))

    for _ in range(2):
        workspace.cli("apply")
    assert not workspace.owned_processes("web"), "a forged approval started it"
    assert workspace.resource_status("web.yaml", "web")["phase"] == "PendingApproval"
    assert not marker.exists(), "a tag in a status file was executed"
    assert "web.approval.yaml" in workspace.cli("validate").stdout  # told, not silently skipped
    assert workspace.cli("verify", str(workspace.desired), "--state-dir", str(workspace.state)).returncode == 1

    assert workspace.cli("approve", "web", "--spec-hash", spec_hash[:12]).returncode == 0  # the real one counts
    workspace.cli("apply")
    assert workspace.owned_processes("web")
    row.runs += 1
    row.passed += 1
