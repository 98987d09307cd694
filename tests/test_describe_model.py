"""`describe model/NAME` says who may use a Model: the gateway admits any process on this host, but a container only
if it declares it uses the gateway, for that Model (or all). The real command, on a desired-state folder."""

from __future__ import annotations

import yaml

from tests.conftest import Workspace


def doc(kind: str, name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "localaistack.dev/v1alpha1", "kind": kind, "metadata": {"name": name},
                           "spec": spec})


def test_describe_model_names_the_workloads_that_use_a_gateway_for_it(workspace: Workspace) -> None:
    (workspace.desired / "chat.gguf").write_bytes(b"GGUF")
    workspace.write("models.yaml", "---\n".join([doc("Model", "chat", {"source": "chat.gguf", "aliases": ["gpt-4o-mini"]}),
                                                 doc("Model", "other", {"source": "chat.gguf"})]))
    workspace.write("gateway.yaml", doc("Workload", "gateway", {"engine": "gateway", "port": 8000}))
    uses = {"webui": {"models": ["chat"]}, "notes": {"models": ["gpt-4o-mini"]}, "agent": {}, "grader": {"models": ["other"]}}
    workspace.write("clients.yaml", "---\n".join(
        doc("Workload", name, {"runtime": "container", "image": "ui:1", "uses": [{"workload": "gateway", "env": "API", **use}]}
            if name != "agent" else {"command": ["agent"], "uses": [{"workload": "gateway", "env": "API"}]})
        for name, use in uses.items()))
    workspace.write("lonely.yaml", doc("Model", "lonely", {"source": "chat.gguf"}))

    described = workspace.cli("describe", "model/chat")
    assert described.returncode == 0, described.stderr
    assert "any process on this host, as model 'chat', 'gpt-4o-mini'; a container only if it declares it in spec.uses" \
        in described.stdout, described.stdout
    assert "loopback only" not in described.stdout and "any client" not in described.stdout
    used_by = next(line for line in described.stdout.splitlines() if line.startswith("  Used by"))
    assert used_by == ("  Used by      Workload/agent (native; any model), Workload/notes (container; models gpt-4o-mini), "
                       "Workload/webui (container; models chat)"), used_by

    used_by = next(line for line in workspace.cli("describe", "model/lonely").stdout.splitlines() if "Used by" in line)
    assert used_by == "  Used by      Workload/agent (native; any model)"
