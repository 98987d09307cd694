"""The gateway's routes as computed from statuses (pure), how the routes file is rewritten (real files), and `plan`'s
warning for a container told to use loopback."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from reconciler.api.meta import ResourceKey
from reconciler.api.status import Placement, ResourceStatus
import reconciler.control.gateway_routes as gateway_routes_module
from reconciler.control.gateway_routes import RoutesPublisher, gateway_routes, routes_of
from reconciler.diff.loopback import loopback_env_warnings
from reconciler.gateway.routes import Route, RouteState, RouteTable
from reconciler.gateway.routes_file import RoutesFile, routes_path, write_routes
from reconciler.load.desired import DesiredState, build_desired
from reconciler.record.conditions import set_condition

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def doc(kind: str, name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "localaistack.dev/v1alpha1", "kind": kind, "metadata": {"name": name},
                           "spec": spec})


def llama(name: str, model: str, port: int) -> str:
    return doc("Workload", name, {"engine": "llama.cpp", "model": model, "port": port})


def status(name: str, phase: str, ready: bool, reason: str, placement: Placement | None = Placement.local,
           port: int = 8080, message: str = "") -> ResourceStatus:
    return ResourceStatus(kind="Workload", name=name, generation=1, phase=phase, placement=placement,
                          endpoints=[f"http://127.0.0.1:{port}/v1"],
                          conditions=set_condition([], "Ready", ready, reason, message, T0))


DESIRED = build_desired({
    "models.yaml": "---\n".join(doc("Model", name, {"source": f"{name}.gguf"}) for name in ("tiny", "big", "idle", "cold")).encode(),
    "servers.yaml": "---\n".join([llama("a", "tiny", 8081), llama("b", "tiny", 8082), llama("big", "big", 8083),
                                  llama("cold", "cold", 8084), llama("typo", "tinny", 8085)]).encode(),
    "gateway.yaml": doc("Workload", "gateway", {"engine": "gateway", "port": 8000}).encode(),
})


def test_each_model_routes_to_its_ready_local_workloads_or_says_why_not() -> None:
    statuses = [
        status("a", "Running", True, "Healthy", port=8081), status("b", "Running", True, "Healthy", port=8082),
        status("big", "Blocked", False, "NoCompatibleGPU", Placement.unavailable, message="needs 1 NVIDIA GPU"),
        status("cold", "Starting", False, "Starting", port=8084, message="waiting for the first health check"),
        status("typo", "Blocked", False, "ModelNotFound", Placement.unavailable),
        status("gateway", "Running", True, "Healthy", port=8000),
    ]
    routes = gateway_routes(DESIRED, statuses, {})
    assert routes is not None
    assert [(b.workload, b.url) for b in routes.models["tiny"].backends] == [
        ("a", "http://127.0.0.1:8081/v1"), ("b", "http://127.0.0.1:8082/v1")]
    big = routes.models["big"]
    assert (big.state, big.reason, big.message, big.workload) == (
        RouteState.unavailable, "NoCompatibleGPU", "needs 1 NVIDIA GPU", "big")
    assert routes.models["cold"].state is RouteState.starting
    assert (routes.models["idle"].state, routes.models["idle"].reason) == (RouteState.unavailable, "NoWorkload")
    assert routes.models["tinny"].reason == "ModelNotFound", "a workload's own model name is routed to its reason"
    assert "gateway" not in routes.models


FALLBACK = {"provider": "acme", "baseUrl": "https://api.acme.example/v1", "model": "acme-large", "region": "eu",
            "context": ["prompts", "completions"], "apiKey": {"file": "/etc/keys/acme"}}
HOSTED = build_desired({
    "remote.yaml": "---\n".join([doc("Model", "big", {"source": "big.gguf"}), doc("Workload", "remote", {
        "engine": "llama.cpp", "model": "big", "port": 8090, "fallback": FALLBACK})]).encode()})


def hosted_status(ready: bool = True, reason: str = "HostedFallback",
                  placement: Placement = Placement.hosted) -> dict[ResourceKey, ResourceStatus]:
    status = ResourceStatus(kind="Workload", name="remote", generation=1, phase="Hosted", placement=placement,
                            endpoints=[FALLBACK["baseUrl"]], conditions=set_condition([], "Ready", ready, reason, "", T0))
    return {ResourceKey("Workload", "remote"): status}


def test_a_workload_hosted_with_consent_routes_to_its_provider_with_the_keys_reference_only() -> None:
    route = routes_of(HOSTED, hosted_status()).models["big"]
    assert route.state is RouteState.hosted and not route.backends and route.hosted is not None
    hosted = route.hosted
    assert (hosted.workload, hosted.provider, hosted.base_url, hosted.model, hosted.region) == (
        "remote", "acme", "https://api.acme.example/v1", "acme-large", "eu")
    assert [item.value for item in hosted.context] == ["prompts", "completions"]
    assert hosted.api_key.describe() == "file /etc/keys/acme"


def test_hosted_without_consent_or_judged_for_another_spec_is_no_route() -> None:
    """A status judged before the fallback was edited is not consent to send under the new spec: wait for the pass."""
    waiting = hosted_status(ready=False, reason="ConsentRequired", placement=Placement.unavailable)
    route = routes_of(HOSTED, waiting).models["big"]
    assert (route.state, route.reason, route.hosted) == (RouteState.unavailable, "ConsentRequired", None)
    key = ResourceKey("Workload", "remote")
    edited = routes_of(HOSTED, hosted_status(), judged={key: "the hash of the spec consented to"}).models["big"]
    assert (edited.state, edited.reason, edited.hosted) == (RouteState.starting, "Pending", None)
    assert "judged again" in edited.message
    current = routes_of(HOSTED, hosted_status(), judged={key: HOSTED.resources[key].spec_hash}).models["big"]
    assert current.state is RouteState.hosted
    without_fallback = status("big", "Hosted", True, "HostedFallback", Placement.hosted)
    assert routes_of(DESIRED, {ResourceKey("Workload", "big"): without_fallback}).models["big"].hosted is None


def test_a_workload_not_reconciled_yet_is_starting() -> None:
    assert routes_of(DESIRED, {}).models["tiny"].state is RouteState.starting


def test_no_gateway_no_routes_shown() -> None:
    without = build_desired({"models.yaml": doc("Model", "tiny", {"source": "tiny.gguf"}).encode()})
    assert gateway_routes(without, [], {}) is None


def container(name: str, env: dict[str, str], **spec: object) -> str:
    return doc("Workload", name, {"runtime": "container", "image": "busybox:1.36", "env": env, **spec})


def test_plan_warns_of_loopback_in_a_bridge_containers_env() -> None:
    desired = build_desired({"ui.yaml": "---\n".join([
        container("bridged", {"API": "http://127.0.0.1:8080/v1", "OTHER": "http://localhost/x"},
                  ports=[{"containerPort": 80, "hostPort": 3000}]),
        container("on-host", {"API": "http://127.0.0.1:8080/v1"}, network="host"),
        container("named", {"API": "http://host.docker.internal:8080/v1", "NOT": "my-localhost-name.example"},
                  network="bridge"),
    ]).encode()})
    assert not desired.errors, desired.errors
    warnings = loopback_env_warnings(desired)
    assert len(warnings) == 2, warnings
    assert "ui.yaml: Workload/bridged: spec.env.API names 127.0.0.1" in warnings[0]
    assert "network 'bridge' is the container itself" in warnings[0]
    assert "declare spec.uses: [{workload: GATEWAY, env: API, path: /v1}]" in warnings[0], "the warning names the fix"
    assert "spec.env.OTHER names localhost" in warnings[1]


def test_aliases_name_one_model_and_never_shadow_a_name() -> None:
    desired = build_desired({"models.yaml": "---\n".join([
        doc("Model", "tiny", {"source": "tiny.gguf", "aliases": ["gpt-4o-mini", "shared", "big"]}),
        doc("Model", "big", {"source": "big.gguf", "aliases": ["Qwen/Qwen2.5-7B:q4", "shared"]}),
    ]).encode()})
    assert not desired.errors, desired.errors
    routes = routes_of(desired, {})
    assert routes.aliases == {"gpt-4o-mini": "tiny", "Qwen/Qwen2.5-7B:q4": "big"}, "'big' is a Model's own name"
    assert routes.ambiguous == {"shared": ("big", "tiny")}
    assert routes.describe("shared") == "AmbiguousModel: an alias of Model/big, Model/tiny"


def test_an_alias_is_a_name_not_a_path() -> None:
    desired = build_desired({"m.yaml": doc("Model", "m", {"source": "m.gguf", "aliases": ["a/../../etc", "m", "m"]}).encode()})
    assert [error.field for error in desired.errors["m.yaml"]] == ["spec.aliases[0]"], desired.errors


def test_the_routes_are_made_again_only_when_a_routed_workloads_status_or_the_desired_state_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    monkeypatch.setattr(gateway_routes_module, "routes_of", lambda *given: made.append(1) or routes_of(*given))
    desired = build_desired({"servers.yaml": "---\n".join([llama("a", "tiny", 8081), doc(
        "Workload", "plain", {"command": ["sleep", "1"]})]).encode(), "models.yaml": doc("Model", "tiny", {"source": "tiny.gguf"}).encode()})
    publisher, path = RoutesPublisher(tmp_path / "gateway" / "routes.json"), tmp_path / "gateway" / "routes.json"
    statuses = {ResourceKey("Workload", "a"): status("a", "Starting", False, "Starting", port=8081)}

    def publish(desired: DesiredState = desired) -> RouteState:
        publisher.publish(lambda: desired, lambda keys: (dict(statuses), {}))
        return RouteTable.model_validate_json(path.read_text()).models["tiny"].state
    assert publish() is RouteState.starting
    for restarts in range(5):  # every reconcile of a workload that serves no model publishes: nothing to make again
        statuses[ResourceKey("Workload", "plain")] = status("plain", "Running", True, "Running").model_copy(
            update={"restart_count": restarts})
        assert publish() is RouteState.starting
    assert len(made) == 1
    statuses[ResourceKey("Workload", "a")] = status("a", "Running", True, "Healthy", port=8081)
    assert publish() is RouteState.ready and len(made) == 2
    path.unlink()  # removed behind the daemon's back: written again
    assert publish() is RouteState.ready and len(made) == 3
    assert publish(build_desired({"models.yaml": doc("Model", "tiny", {"source": "tiny.gguf"}).encode()})) is RouteState.unavailable


def test_routes_already_written_are_not_replaced_so_the_gateway_does_not_read_them_again(tmp_path: Path) -> None:
    """A one-shot `apply` publishes the routes afresh: the same table leaves the file (its identity, which the
    gateway watches) as it was; another table replaces it."""
    path = routes_path(tmp_path)
    table = RouteTable(models={"tiny": Route(state=RouteState.starting, reason="Starting", message="not yet")})
    write_routes(path, table)
    reader = RoutesFile(path)
    assert reader.current() == table
    written = path.stat()
    write_routes(path, table)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    moved = RouteTable(models={"tiny": Route(state=RouteState.starting, reason="Starting", message="soon")})
    write_routes(path, moved)
    assert path.stat().st_ino != written.st_ino and reader.current() == moved
