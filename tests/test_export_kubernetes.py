"""Export: the desired state as Kubernetes manifests, checked against the Kubernetes object models and the CRDs.

No cluster: the `kubernetes` client's models stand in for the API server's types, and the CRDs' own
openAPIV3Schema (as JSON Schema) for its validation of the custom resources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes.client import ApiClient

from reconciler.api.kinds import Workload
from reconciler.api.meta import ResourceKey
from reconciler.diff.engines import Blocked, engine_command
from reconciler.export.kubernetes import EXPORT_NOTE, PLACEHOLDER_IMAGE, _IMAGE_FACTS, kubernetes_manifests, render_yaml
from reconciler.load.desired import DesiredState, build_desired, load_desired
from tests.test_schemas import as_json_schema

ROOT = Path(__file__).resolve().parent.parent
CRD_FILES = sorted((ROOT / "crds").glob("localaistack.dev_*.yaml"))
SHIPPED = [ROOT / "desired-state", *sorted(path for path in (ROOT / "examples").iterdir() if path.is_dir())]
MODELS = {"Deployment": "V1Deployment", "Service": "V1Service", "CustomResourceDefinition": "V1CustomResourceDefinition"}
CLIENT = ApiClient()


def crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in CRD_FILES]


def desired(text: str) -> DesiredState:
    state = build_desired({"specs.yaml": text.encode()})
    assert not state.errors, state.errors
    return state


def workload(name: str, spec: str, labels: str = "") -> str:
    return (f"---\napiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\n{labels}"
            f"spec:\n{spec}")


def by_kind(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def container_of(manifests: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (container,) = by_kind(manifests, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return container


def note_of(manifests: list[dict[str, Any]], name: str) -> str:
    return by_kind(manifests, "Deployment", name)["metadata"].get("annotations", {}).get(EXPORT_NOTE, "")


def assert_valid(manifests: list[dict[str, Any]]) -> None:
    """Built-in kinds deserialize into the client's models with nothing lost; custom resources fit their CRD."""
    schemas = {crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for crd in crds()}
    for manifest in manifests:
        kind = manifest["kind"]
        if kind in MODELS:
            model = CLIENT._ApiClient__deserialize(manifest, MODELS[kind])  # type: ignore[attr-defined]
            assert CLIENT.sanitize_for_serialization(model) == manifest, f"{kind} has fields its model lacks"
        else:
            assert manifest["apiVersion"] == "localaistack.dev/v1alpha1"
            jsonschema.Draft4Validator(as_json_schema(schemas[kind])).validate(manifest)


CONTAINER = workload("site", """\
  runtime: container
  image: example/busybox:1
  imagePullPolicy: Never
  command: [httpd, -f]
  args: [-p, "8080"]
  env: {GREETING: hi, MODE: "1"}
  workingDir: /www
  ports:
    - {containerPort: 8080, hostPort: 18080}
    - {containerPort: 5353, protocol: udp, hostIP: 0.0.0.0}
  volumes:
    - {source: www, target: /www}
    - {source: /var/cache/site, target: /cache, readOnly: false}
  resources: {memory: 32Mi, cpus: 1.5}
  security: {capabilities: [net_bind_service], user: "1000", readOnlyRootFilesystem: false}
  health:
    http: {path: /ready, expectStatus: 204}
    periodSeconds: 2.5
    timeoutSeconds: 0.5
    initialDelaySeconds: 3
    failureThreshold: 4
    startupSeconds: 30
  restart: {policy: OnFailure}
""", labels="  labels: {tier: web}\n")

LLAMA = """\
---
apiVersion: localaistack.dev/v1alpha1
kind: Model
metadata: {name: chat-model}
spec: {source: models/chat.gguf, format: gguf}
""" + workload("chat", """\
  engine: llama.cpp
  model: chat-model
  port: 8080
  llamaCpp: {contextSize: 4096, gpuLayers: 99}
  args: [--verbose]
  resources:
    gpus: {indices: [1], minMemory: 8Gi}
""")


@pytest.mark.parametrize("folder", SHIPPED, ids=[path.name for path in SHIPPED])
def test_shipped_folders_export_to_valid_manifests(folder: Path) -> None:
    state = load_desired(folder)
    assert not state.errors
    manifests = kubernetes_manifests(state, crds(), "ai", source_root=str(folder))
    assert_valid(manifests)
    workloads = [key.name for key in state.resources if key.kind == "Workload"]
    assert sorted(m["metadata"]["name"] for m in manifests if m["kind"] == "Deployment") == sorted(workloads)


def test_order_is_crds_then_custom_resources_then_deployments_and_services() -> None:
    manifests = kubernetes_manifests(desired(LLAMA + CONTAINER), crds())
    kinds = [m["kind"] for m in manifests]
    assert kinds == ["CustomResourceDefinition"] * 3 + ["Model", "Workload", "Workload"] + ["Deployment", "Service"] * 2
    assert [m["metadata"]["name"] for m in manifests[3:]] == ["chat-model", "chat", "site", "chat", "chat", "site", "site"]
    assert manifests[:3] == crds()
    assert_valid(manifests)


def test_custom_resources_are_what_the_user_wrote() -> None:
    manifests = kubernetes_manifests(desired(CONTAINER), [])
    resource = by_kind(manifests, "Workload", "site")
    assert resource["metadata"] == {"name": "site", "labels": {"tier": "web"}}
    assert resource["spec"]["ports"] == [{"containerPort": 8080, "hostPort": 18080},
                                         {"containerPort": 5353, "protocol": "udp", "hostIP": "0.0.0.0"}]
    assert resource["spec"]["health"]["startupSeconds"] == 30 and resource["spec"]["resources"]["memory"] == "32Mi"
    assert resource["spec"]["security"]["capabilities"] == ["NET_BIND_SERVICE"]  # as the reconciler spells it
    assert "network" not in resource["spec"] and "host" not in resource["spec"]  # defaults stay unwritten
    original = desired(CONTAINER).resources[ResourceKey("Workload", "site")].resource
    assert isinstance(original, Workload) and Workload.model_validate(resource).spec == original.spec


def test_custom_resource_failing_its_crd_is_caught() -> None:
    """The check is real: a spec the CRD cannot accept fails it."""
    manifests = kubernetes_manifests(desired(CONTAINER), [])
    by_kind(manifests, "Workload", "site")["spec"]["resources"]["memory"] = "lots"
    with pytest.raises(jsonschema.ValidationError):
        assert_valid(manifests)


def test_container_workload_maps_to_a_deployment() -> None:
    manifests = kubernetes_manifests(desired(CONTAINER), [], source_root="/srv/state")
    assert_valid(manifests)
    deployment = by_kind(manifests, "Deployment", "site")
    labels = {"app.kubernetes.io/name": "site", "app.kubernetes.io/managed-by": "localaistack-reconciler"}
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["selector"] == {"matchLabels": labels}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"tier": "web", **labels}
    container = container_of(manifests, "site")
    assert (container["image"], container["imagePullPolicy"]) == ("example/busybox:1", "Never")
    assert (container["command"], container["args"], container["workingDir"]) == (["httpd", "-f"], ["-p", "8080"], "/www")
    assert container["env"] == [{"name": "GREETING", "value": "hi"}, {"name": "MODE", "value": "1"}]
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 5353, "protocol": "UDP"}]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"medium": "Memory"}},
                              {"name": "volume-0", "hostPath": {"path": "/srv/state/www"}},
                              {"name": "volume-1", "hostPath": {"path": "/var/cache/site"}}]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp", "readOnly": False},
                                         {"name": "volume-0", "mountPath": "/www", "readOnly": True},
                                         {"name": "volume-1", "mountPath": "/cache", "readOnly": False}]
    assert container["resources"] == {"limits": {"memory": "32Mi", "cpu": "1500m"}, "requests": {"memory": "32Mi"}}
    assert (pod["restartPolicy"], pod["automountServiceAccountToken"], pod["terminationGracePeriodSeconds"]) == ("Always", False, 10)
    assert "hostNetwork" not in pod


def test_ports_become_a_cluster_ip_service_without_host_ports() -> None:
    manifests = kubernetes_manifests(desired(CONTAINER), [])
    service = by_kind(manifests, "Service", "site")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "site", "app.kubernetes.io/managed-by": "localaistack-reconciler"}
    assert service["spec"]["ports"] == [{"name": "tcp-18080", "port": 18080, "targetPort": 8080, "protocol": "TCP"},
                                        {"name": "udp-5353", "port": 5353, "targetPort": 5353, "protocol": "UDP"}]
    assert all(len(port["name"]) <= 15 for port in service["spec"]["ports"])  # IANA_SVC_NAME
    assert "hostPort" not in str(container_of(manifests, "site")["ports"])
    note = note_of(manifests, "site")
    assert "hostPort is not exported" in note and "127.0.0.1:18080" in note
    assert "loopback" in note and "0.0.0.0:5353 beyond loopback" in note


def test_unexposed_workload_has_no_service_and_rolls_normally() -> None:
    manifests = kubernetes_manifests(desired(workload("batch", "  command: [python3, job.py]\n")), [])
    assert [m["kind"] for m in manifests] == ["Workload", "Deployment"]
    assert "strategy" not in manifests[1]["spec"] and "ports" not in container_of(manifests, "batch")


def test_a_staged_update_becomes_the_deployments_deadline_and_min_ready_seconds() -> None:
    spec = "  command: [python3, app.py]\n  update: {progressDeadlineSeconds: 90.5, soakSeconds: 45, rollback: Auto}\n"
    manifests = kubernetes_manifests(desired(workload("app", spec)), [])
    deployment = by_kind(manifests, "Deployment", "app")["spec"]
    assert (deployment["progressDeadlineSeconds"], deployment["minReadySeconds"]) == (91, 45)
    note = note_of(manifests, "app")
    assert "spec.update.progressDeadlineSeconds 90.5 becomes 91" in note and "kubectl rollout undo" in note
    assert_valid(manifests)
    longer_soak = kubernetes_manifests(desired(workload("app", "  command: [python3, app.py]\n  update: {progressDeadlineSeconds: 30, soakSeconds: 60}\n")), [])
    assert by_kind(longer_soak, "Deployment", "app")["spec"]["progressDeadlineSeconds"] == 90  # must exceed minReadySeconds


def test_security_context_keeps_the_least_privilege_defaults() -> None:
    manifests = kubernetes_manifests(desired(workload("plain", "  runtime: container\n  image: example/app:1\n")), [])
    assert_valid(manifests)
    assert container_of(manifests, "plain")["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
        "readOnlyRootFilesystem": True, "runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
    }
    pod = by_kind(manifests, "Deployment", "plain")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    note = note_of(manifests, "plain")
    assert "network 'none'" in note and "pidsLimit 512" in note and "65534:65534" in note


def test_security_context_follows_the_spec() -> None:
    manifests = kubernetes_manifests(desired(CONTAINER), [])
    context = container_of(manifests, "site")["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert (context["readOnlyRootFilesystem"], context["runAsUser"], context["runAsNonRoot"]) == (False, 1000, True)
    assert "runAsGroup" not in context  # "1000" names no group: the image's, as with docker --user 1000
    root = workload("root", "  runtime: container\n  image: example/app:1\n  security: {user: '0:0'}\n")
    context = container_of(kubernetes_manifests(desired(root), []), "root")["securityContext"]
    assert (context["runAsNonRoot"], context["runAsUser"], context["runAsGroup"]) == (False, 0, 0)


def test_health_check_becomes_startup_readiness_and_liveness_probes() -> None:
    manifests = kubernetes_manifests(desired(CONTAINER), [])
    container = container_of(manifests, "site")
    handler = {"httpGet": {"path": "/ready", "port": 8080}}
    assert container["startupProbe"] == {**handler, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 30,
                                         "initialDelaySeconds": 3}
    assert container["readinessProbe"] == {**handler, "periodSeconds": 3, "timeoutSeconds": 1, "failureThreshold": 1}
    assert container["livenessProbe"] == {**handler, "periodSeconds": 3, "timeoutSeconds": 1, "failureThreshold": 4}
    note = note_of(manifests, "site")
    assert "expectStatus 204" in note and "health.periodSeconds 2.5 becomes 3" in note
    assert "health.timeoutSeconds 0.5 becomes 1" in note


@pytest.mark.parametrize(("check", "handler"), [
    ("tcp: {}", {"tcpSocket": {"port": 9000}}),
    ("tcp: {port: 9001}", {"tcpSocket": {"port": 9001}}),
    ("exec: {command: [curl, -f, localhost]}", {"exec": {"command": ["curl", "-f", "localhost"]}}),
])
def test_tcp_and_exec_checks(check: str, handler: dict[str, Any]) -> None:
    spec = f"  command: [server]\n  port: 9000\n  health:\n    {check}\n    periodSeconds: 7\n    startupSeconds: 10\n"
    manifests = kubernetes_manifests(desired(workload("svc", spec)), [])
    assert_valid(manifests)
    container = container_of(manifests, "svc")
    assert container["livenessProbe"] == {**handler, "periodSeconds": 7, "timeoutSeconds": 2, "failureThreshold": 3}
    assert container["startupProbe"]["failureThreshold"] == 10
    assert ("ran on the host" in note_of(manifests, "svc")) == ("exec" in handler)


def test_no_health_check_no_probes() -> None:
    manifests = kubernetes_manifests(desired(workload("plain", "  runtime: container\n  image: example/app:1\n")), [])
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & container_of(manifests, "plain").keys()


def test_gpus_become_device_plugin_limits_and_what_cannot_be_pinned_is_noted() -> None:
    manifests = kubernetes_manifests(desired(LLAMA), [])
    assert_valid(manifests)
    assert container_of(manifests, "chat")["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    note = note_of(manifests, "chat")
    assert "GPU indices [1] cannot be pinned" in note and "minMemory 8Gi" in note and "nodeSelector" in note
    assert by_kind(manifests, "Deployment", "chat")["spec"]["strategy"] == {"type": "Recreate"}
    counted = workload("box", "  runtime: container\n  image: example/cuda:1\n  resources: {gpus: {count: 2}, cpus: 0.1}\n")
    resources = container_of(kubernetes_manifests(desired(counted), []), "box")["resources"]
    assert resources == {"limits": {"cpu": "100m", "nvidia.com/gpu": "2"}}


def test_llama_cpp_renders_the_engines_flags_for_an_image() -> None:
    state = desired(LLAMA)
    manifests = kubernetes_manifests(state, [])
    container = container_of(manifests, "chat")
    assert container["image"] == PLACEHOLDER_IMAGE and "command" not in container  # llama-server: the image's entrypoint
    chat = state.resources[ResourceKey("Workload", "chat")].resource
    assert isinstance(chat, Workload)
    rendered = engine_command(chat.spec.model_copy(update={"host": "0.0.0.0"}), "/models/chat.gguf", _IMAGE_FACTS)
    assert not isinstance(rendered, Blocked) and container["args"] == list(rendered.args)
    assert container["args"][:6] == ["--model", "/models/chat.gguf", "--host", "0.0.0.0", "--port", "8080"]
    assert container["args"][-1] == "--verbose" and "--n-gpu-layers" in container["args"]
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8080}  # llama-server's default check
    note = note_of(manifests, "chat")
    assert "ghcr.io/ggml-org/llama.cpp:server-cuda" in note and "/models/chat.gguf" in note
    assert "models/chat.gguf on the host" in note and "llama-cpp-python" in note
    assert by_kind(manifests, "Service", "chat")["spec"]["ports"][0]["port"] == 8080


def test_a_chat_format_llama_server_lacks_is_left_out_of_the_image_with_a_note() -> None:
    manifests = kubernetes_manifests(desired(LLAMA.replace("contextSize: 4096", "contextSize: 4096, chatFormat: alpaca")), [])
    assert_valid(manifests)
    assert "--chat-template" not in container_of(manifests, "chat")["args"]
    assert "chatFormat 'alpaca' is a llama-cpp-python format that llama-server lacks" in note_of(manifests, "chat")


def test_vllm_runs_vllm_serve() -> None:
    text = ("---\napiVersion: localaistack.dev/v1alpha1\nkind: Model\nmetadata: {name: w}\n"
            "spec: {source: /data/qwen/, format: safetensors}\n")
    text += workload("qwen", "  engine: vllm\n  model: w\n  port: 8000\n  vllm: {dtype: bfloat16}\n"
                             "  resources: {gpus: {count: 1}, memory: 40Gi}\n")
    manifests = kubernetes_manifests(desired(text), [])
    assert_valid(manifests)
    container = container_of(manifests, "qwen")
    assert container["command"] == ["vllm"]
    assert container["args"] == ["serve", "/models/qwen", "--host", "0.0.0.0", "--port", "8000", "--served-model-name", "w",
                                 "--dtype", "bfloat16"]
    assert container["resources"] == {"limits": {"memory": "40Gi", "nvidia.com/gpu": "1"}, "requests": {"memory": "40Gi"}}
    assert "vllm/vllm-openai" in note_of(manifests, "qwen")


def test_an_on_demand_workload_is_exported_always_on_with_a_note() -> None:
    text = LLAMA.replace("  args: [--verbose]\n", "  args: [--verbose]\n  activation: {mode: OnDemand, idleSeconds: 60}\n")
    assert "OnDemand" in text
    manifests = kubernetes_manifests(desired(text), [])
    assert_valid(manifests)
    assert by_kind(manifests, "Deployment", "chat")["spec"]["replicas"] == 1
    assert "activation OnDemand is not exported" in note_of(manifests, "chat")


def test_native_process_needs_an_image_and_says_so() -> None:
    spec = ("  command: [python3, -m, http.server]\n  args: [--bind, 0.0.0.0, '8099']\n  port: 8099\n"
            "  host: 0.0.0.0\n  workingDir: ./www\n  env: {PYTHONUNBUFFERED: '1'}\n"
            "  restart: {policy: Never, backoff: {initialSeconds: 2}}\n  terminationGracePeriodSeconds: 2.5\n")
    manifests = kubernetes_manifests(desired(workload("hello", spec)), [])
    assert_valid(manifests)
    container = container_of(manifests, "hello")
    assert (container["image"], container["command"], container["args"]) == (
        PLACEHOLDER_IMAGE, ["python3", "-m", "http.server"], ["--bind", "0.0.0.0", "8099"])
    assert "workingDir" not in container and container["env"] == [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    pod = by_kind(manifests, "Deployment", "hello")["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Always" and pod["terminationGracePeriodSeconds"] == 3
    note = note_of(manifests, "hello")
    for words in ("'python3' on the host", "replace image REPLACE-ME", "workingDir './www'", "restart policy Never",
                  "a Job", "backoff is not exported", "0.0.0.0:8099 beyond loopback", "least-privilege defaults"):
        assert words in note, words


def test_a_native_workloads_host_user_is_said_not_to_carry_over() -> None:
    manifests = kubernetes_manifests(desired(workload("hello", "  command: [python3]\n  user: llama\n")), [])
    assert_valid(manifests)
    assert container_of(manifests, "hello")["securityContext"]["runAsUser"] == 65534
    assert "uid 65534, not as the host's user llama" in note_of(manifests, "hello")


def test_host_network_and_relative_volume_without_a_root() -> None:
    spec = ("  runtime: container\n  image: example/app:1\n  network: host\n"
            "  volumes: [{source: data, target: /data}]\n  security: {user: '10:10'}\n")
    manifests = kubernetes_manifests(desired(workload("net", spec)), [])
    pod = by_kind(manifests, "Deployment", "net")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["volumes"][1] == {"name": "volume-0", "hostPath": {"path": "data"}}
    note = note_of(manifests, "net")
    assert "hostNetwork: true" in note and "absolute path on the node" in note and "hostPath volumes" in note
    assert "65534" not in note


def test_a_volume_on_tmp_replaces_the_tmp_empty_dir() -> None:
    spec = "  runtime: container\n  image: example/app:1\n  volumes: [{source: /scratch, target: /tmp, readOnly: false}]\n"
    container = container_of(kubernetes_manifests(desired(workload("scratch", spec)), []), "scratch")
    assert container["volumeMounts"] == [{"name": "volume-0", "mountPath": "/tmp", "readOnly": False}]


def test_namespace_goes_on_namespaced_objects_only() -> None:
    manifests = kubernetes_manifests(desired(LLAMA + CONTAINER), crds(), namespace="ai")
    for manifest in manifests:
        expected = None if manifest["kind"] == "CustomResourceDefinition" else "ai"
        assert manifest["metadata"].get("namespace") == expected, manifest["kind"]
    assert all("namespace" not in m["metadata"] for m in kubernetes_manifests(desired(CONTAINER), crds()))


def test_rejected_resources_are_not_exported() -> None:
    text = workload("one", "  command: [a]\n  port: 9000\n") + workload("two", "  command: [b]\n  port: 9000\n")
    state = build_desired({"specs.yaml": text.encode()})
    assert state.errors and kubernetes_manifests(state, []) == []


def test_inputs_are_not_shared_with_the_output() -> None:
    given = crds()
    manifests = kubernetes_manifests(desired(CONTAINER), given)
    manifests[0]["metadata"]["name"] = "changed"
    assert given == crds()
    deployment = by_kind(manifests, "Deployment", "site")
    deployment["spec"]["selector"]["matchLabels"]["x"] = "y"
    assert "x" not in deployment["spec"]["template"]["metadata"]["labels"]


def test_render_yaml_round_trips_and_is_stable() -> None:
    manifests = kubernetes_manifests(desired(LLAMA + CONTAINER), crds(), namespace="ai")
    text = render_yaml(manifests)
    assert list(yaml.safe_load_all(text)) == manifests
    assert text == render_yaml(kubernetes_manifests(desired(LLAMA + CONTAINER), crds(), namespace="ai"))
    assert "&id" not in text and "*id" not in text  # no anchors: each document stands alone for kubectl
    assert text.startswith("---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n")
    assert text.count("\n---\n") == len(manifests) - 1


def test_a_loopback_url_in_env_names_the_service_behind_it() -> None:
    text = LLAMA + workload("ui", "  runtime: container\n  image: example/ui:1\n"
                                  "  env: {API: 'http://127.0.0.1:8080/v1', OTHER: 'localhost', PLAIN: x}\n")
    manifests = kubernetes_manifests(desired(text), [])
    container = container_of(manifests, "ui")
    assert container["env"][0] == {"name": "API", "value": "http://127.0.0.1:8080/v1"}  # noted, never rewritten
    note = note_of(manifests, "ui")
    assert "env API names 127.0.0.1:8080: Workload chat serves that port on the host: in the cluster use its Service, chat:8080" in note
    assert "env OTHER names localhost: in a pod that is the pod itself" in note and "PLAIN" not in note
