"""spec.uses, pure: what a workload waits for, the endpoint each use gives it, cycles, and whom a gateway admits."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.api.status import Condition, ConditionStatus, ResourceStatus
from reconciler.api.workload import WorkloadSpec
from reconciler.diff.engines import Blocked
from reconciler.diff.uses import use_cycle, use_endpoints, waiting_for
from reconciler.gateway.routes import ContainerClient

GATEWAY = WorkloadSpec(engine="gateway", port=8080)
CHAT = WorkloadSpec(engine="process", command=["srv"], port=8081, host="0.0.0.0")


def native(**spec: Any) -> WorkloadSpec:
    return WorkloadSpec(command=["ui"], **spec)


def container(**spec: Any) -> WorkloadSpec:
    return WorkloadSpec(runtime="container", image="ui:1", **spec)


def status(name: str, ready: bool, reason: str = "Healthy") -> ResourceStatus:
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return ResourceStatus(kind="Workload", name=name, generation=1, phase="Running", conditions=[
        Condition(type="Ready", status=ConditionStatus.true if ready else ConditionStatus.false, reason=reason,
                  message="why", last_transition_time=at)])


def test_each_use_is_given_the_endpoint_as_its_runtime_reaches_it() -> None:
    uses = [{"workload": "gateway", "env": "BASE", "path": "/v1"}, {"workload": "chat", "env": "CHAT"}]
    assert use_endpoints(native(uses=uses), {"gateway": GATEWAY, "chat": CHAT}) == {
        "BASE": "http://127.0.0.1:8080/v1", "CHAT": "http://127.0.0.1:8081"}
    assert use_endpoints(container(uses=uses[:1]), {"gateway": GATEWAY}) == {
        "BASE": "http://host.docker.internal:8080/v1"}


def test_a_container_may_use_only_a_gateway_and_models_only_name_a_gateways() -> None:
    refused = use_endpoints(container(uses=[{"workload": "chat", "env": "CHAT"}]), {"chat": CHAT})
    assert isinstance(refused, Blocked) and refused.reason == "InvalidUse" and "use a gateway" in refused.message
    refused = use_endpoints(native(uses=[{"workload": "chat", "env": "CHAT", "models": ["m"]}]), {"chat": CHAT})
    assert isinstance(refused, Blocked) and "not a gateway" in refused.message


def test_a_start_waits_for_every_used_workload_to_be_ready_and_names_why() -> None:
    spec = native(uses=[{"workload": "gateway", "env": "A"}, {"workload": "chat", "env": "B"},
                        {"workload": "ghost", "env": "C"}])
    waiting = waiting_for(spec, {"gateway": status("gateway", True), "chat": status("chat", False, "ModelMissing")})
    assert waiting is not None and waiting.reason == "WaitingForDependencies"
    assert waiting.message == ("starts once it is Ready: Workload/chat (ModelMissing: why); "
                               "Workload/ghost (not in the desired state)")
    assert waiting_for(spec.model_copy(update={"uses": spec.uses[:1]}), {"gateway": status("gateway", True)}) is None
    running = waiting_for(spec, {"gateway": None, "chat": None}, running=True)
    assert running is not None and running.message == "starts once it is Ready: Workload/ghost (not in the desired state)", \
        "one that runs waits only for a used workload that is gone: a new start would lose its endpoint"


def test_workloads_that_use_each_other_are_refused_as_a_cycle() -> None:
    workloads = {"a": native(uses=[{"workload": "b", "env": "B"}]), "b": native(uses=[{"workload": "c", "env": "C"}]),
                 "c": native(uses=[{"workload": "a", "env": "A"}]), "d": native(uses=[{"workload": "a", "env": "A"}])}
    cycle = use_cycle("a", workloads)
    assert cycle is not None and "(a -> b -> c -> a)" in cycle.message
    assert use_cycle("d", workloads) is None, "using a cycle is not being in one: d waits, as its status says"
    assert use_cycle("a", {"a": native(uses=[{"workload": "a", "env": "A"}])}) is not None


def test_a_use_may_not_set_a_variable_twice() -> None:
    with pytest.raises(ValidationError, match="env BASE is set twice"):
        native(env={"BASE": "x"}, uses=[{"workload": "gateway", "env": "BASE"}])
    with pytest.raises(ValidationError, match="env BASE is set twice"):
        native(uses=[{"workload": "gateway", "env": "BASE"}, {"workload": "chat", "env": "BASE"}])
    for reserved in ("HOST", "port", "NVIDIA_VISIBLE_DEVICES"):
        with pytest.raises(ValidationError, match=f"spec.uses may not set env {reserved}"):
            native(uses=[{"workload": "gateway", "env": reserved}])


def test_a_container_client_is_admitted_per_gateway_and_per_model() -> None:
    client = ContainerClient(workload="webui", gateways={8080: ("chat",), 9090: None})
    assert client.refusal(8080, "chat", {}) is None
    assert client.refusal(8080, "gpt-4o-mini", {"gpt-4o-mini": "chat"}) is None, "an alias of an allowed Model"
    assert "may use only chat" in client.refusal(8080, "other", {})
    assert client.refusal(9090, "other", {}) is None
    assert "does not declare it uses this gateway" in client.refusal(7070, None, {})


def test_the_kubernetes_export_keeps_readiness_apart_and_names_what_uses_it_cannot_export() -> None:
    from reconciler.api.kinds import Workload
    from reconciler.export.kubernetes import workload_manifests

    ui = Workload.model_validate({"metadata": {"name": "ui"}, "spec": {
        "command": ["ui"], "port": 3000, "health": {"http": {"path": "/health"}},
        "readiness": {"http": {"path": "/ready"}}, "uses": [{"workload": "gateway", "env": "BASE"}]}})
    manifests = workload_manifests(ui, {}, None)
    container = manifests[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert "spec.uses[0] (gateway) is not exported: set BASE to its Service's URL" in str(manifests)
