"""The desired state as Kubernetes manifests: the scale-out path for a user who outgrows one host. Pure.

The output is the CRDs, the user's resources as custom resources (the same intent, kept verbatim), and for each
Workload a Deployment (+ a ClusterIP Service for its ports) that runs it as closely as Kubernetes can express.
Whatever cannot be expressed is said in the Deployment's `localaistack.dev/export-note` annotation, never dropped
silently: `kubectl apply` must not quietly run something other than what the reconciler would.
"""

from __future__ import annotations

import copy
import posixpath
import re
from typing import Any

import yaml

from reconciler.api.container import NOBODY
from reconciler.api.kinds import Model, Workload
from reconciler.api.meta import API_VERSION, GROUP, Resource
from reconciler.api.workload import Engine, Runtime, WorkloadSpec
from reconciler.diff.engines import Blocked, engine_check, engine_command
from reconciler.export.pod_fields import (Manifest, deployment_rollout, pod_probes, pod_resources, restart_notes,
                                         security_context, whole_seconds)
from reconciler.load.desired import DesiredState
from reconciler.observe.host import EngineFacts

EXPORT_NOTE = f"{GROUP}/export-note"
MANAGED_BY = "localaistack-reconciler"
NAME_LABEL = "app.kubernetes.io/name"
PLACEHOLDER_IMAGE = "REPLACE-ME"
MODELS_DIR = "/models"
ENGINE_IMAGES = {Engine.llama_cpp: "ghcr.io/ggml-org/llama.cpp:server", Engine.vllm: "vllm/vllm-openai"}
# Engines are rendered as they run in those images: llama-server is the image's entrypoint, vllm is on PATH.
_IMAGE_FACTS = EngineFacts(llama_server="llama-server", vllm="vllm")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_LOOPBACK_URL = re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\])(?::(\d+))?")


def kubernetes_manifests(
    desired: DesiredState, crds: list[Manifest], namespace: str | None = None, *, source_root: str | None = None
) -> list[Manifest]:
    """CRDs (as given), then every valid resource as a custom resource, then each Workload's Deployment (+ Service).

    Rejected resources are not exported (the caller reports `desired.errors`). `source_root` is the folder the
    desired state was read from: with it, relative volume sources become the absolute paths a hostPath needs.
    """
    manifests = [copy.deepcopy(crd) for crd in crds]
    entries = [desired.resources[key] for key in sorted(desired.resources)]
    manifests += [custom_resource(entry.resource, namespace) for entry in entries]
    models = {entry.resource.name: entry.resource for entry in entries if isinstance(entry.resource, Model)}
    workloads = [(entry.resource, entry.file) for entry in entries if isinstance(entry.resource, Workload)]
    listeners = {port: workload.name for workload, _ in workloads
                 for _, port, protocol in workload.spec.listens if protocol == "tcp"}
    for workload, file in workloads:
        spec_dir = posixpath.join(source_root, posixpath.dirname(file)) if source_root else None
        manifests += workload_manifests(workload, models, namespace, spec_dir, listeners)
    return manifests


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # each document stands alone: no &id001 anchors between shared values


def render_yaml(manifests: list[Manifest]) -> str:
    """Multi-document YAML in the manifests' own key order (apiVersion, kind, metadata, spec): stable and readable."""
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=1000)


def custom_resource(resource: Resource, namespace: str | None) -> Manifest:
    """The resource with the fields the user wrote (normalised: 2Gi, DNS names), so it validates against its CRD."""
    meta = resource.metadata
    spec = resource.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)  # type: ignore[attr-defined]
    return {"apiVersion": API_VERSION, "kind": resource.kind,
            "metadata": _metadata(resource.name, namespace, dict(meta.labels), dict(meta.annotations)),
            "spec": _whole_numbers(spec)}


def _whole_numbers(value: Any) -> Any:
    """10.0 back to 10, as the user wrote it (pydantic keeps seconds as floats)."""
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def workload_manifests(
    workload: Workload, models: dict[str, Model], namespace: str | None, spec_dir: str | None = None,
    listeners: dict[int, str] | None = None,
) -> list[Manifest]:
    """A single-replica Deployment, and a ClusterIP Service when the workload listens on ports.

    `listeners` (host tcp port -> Workload name) lets a note name the Service behind a loopback URL in spec.env.
    """
    spec, name = workload.spec, workload.name
    notes: list[str] = []
    labels = {NAME_LABEL: name, "app.kubernetes.io/managed-by": MANAGED_BY}
    if spec.runtime is Runtime.container:
        container, volumes, service_ports = _container_runtime(name, spec, spec_dir, notes)
        check = spec.health
    else:
        container, volumes, service_ports = _native_runtime(name, spec, models, notes)
        check = engine_check(spec, _IMAGE_FACTS)  # an engine without a check gets its default, as on the host
    if resources := pod_resources(spec, notes):
        container["resources"] = resources
    if not any(volume.target == "/tmp" for volume in spec.volumes):  # the reconciler always gives a tmpfs /tmp
        volumes.insert(0, ({"name": "tmp", "emptyDir": {"medium": "Memory"}}, "/tmp", False))
    if volumes:
        container["volumeMounts"] = [{"name": volume["name"], "mountPath": target, "readOnly": read_only}
                                     for volume, target, read_only in volumes]
    if check is not None:
        container.update(pod_probes(check, spec, notes))
    if spec.readiness is not None:  # it decides readiness alone, as on the host
        container["readinessProbe"] = pod_probes(spec.readiness, spec, notes)["readinessProbe"]
    notes += [f"spec.uses[{index}] ({use.workload}) is not exported: set {use.env} to its Service's URL"
              for index, use in enumerate(spec.uses)]
    container["securityContext"] = security_context(spec)
    restart_notes(spec, notes)
    _loopback_env_notes(spec, listeners or {}, notes)
    pod: Manifest = {
        "automountServiceAccountToken": False,  # it never had API access on the host
        "enableServiceLinks": False,  # its environment is exactly spec.env, as on the host
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": whole_seconds(spec.termination_grace_period_seconds, "spec.terminationGracePeriodSeconds", notes, 0),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [volume for volume, _, _ in volumes],
    }
    if spec.runtime is Runtime.container and spec.network == "host":
        pod["hostNetwork"] = True
    deployment_spec: Manifest = {"replicas": 1, "selector": {"matchLabels": dict(labels)}, **deployment_rollout(spec, notes)}
    if spec.resources.gpus.wanted or spec.listens:  # one holder of its GPUs and ports at a time, as on the host
        deployment_spec["strategy"] = {"type": "Recreate"}
    deployment_spec["template"] = {"metadata": {"labels": {**workload.metadata.labels, **labels}}, "spec": pod}
    annotations = {EXPORT_NOTE: "\n".join(notes)} if notes else {}
    manifests = [{"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": _metadata(name, namespace, {**workload.metadata.labels, **labels}, annotations),
                  "spec": deployment_spec}]
    if service_ports:
        manifests.append({"apiVersion": "v1", "kind": "Service", "metadata": _metadata(name, namespace, dict(labels), {}),
                          "spec": {"type": "ClusterIP", "selector": dict(labels), "ports": service_ports}})
    return manifests


Volume = tuple[Manifest, str, bool]  # (pod volume, mount path, read-only)


def _container_runtime(name: str, spec: WorkloadSpec, spec_dir: str | None, notes: list[str]) -> tuple[Manifest, list[Volume], list[Manifest]]:
    assert spec.image is not None
    container: Manifest = {"name": name, "image": spec.image, "imagePullPolicy": spec.image_pull_policy.value}
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    _env(container, spec)
    container_ports = _unique([{"containerPort": port.container_port, "protocol": port.protocol.upper()}
                               for port in spec.ports], ("containerPort", "protocol"))
    if container_ports:
        container["ports"] = container_ports
    published = [f"{port.container_port}/{port.protocol} at {_address(port.host_ip)}:{port.published_port}" for port in spec.ports]
    if published:
        notes.append(f"hostPort is not exported: the host published {', '.join(published)}; the ClusterIP Service "
                     f"{name} serves the same port numbers inside the cluster only")
    _exposure_notes([(port.host_ip, port.published_port) for port in spec.ports], notes)
    volumes: list[Volume] = []
    for index, mount in enumerate(spec.volumes):
        path = mount.source
        if not path.startswith("/") and spec_dir is not None:
            path = posixpath.normpath(posixpath.join(spec_dir, path))
        if not path.startswith("/"):
            notes.append(f"volume {mount.source!r} is relative to the spec file's folder: replace hostPath {path!r} "
                         "with an absolute path on the node")
        volumes.append(({"name": f"volume-{index}", "hostPath": {"path": path}}, mount.target, mount.read_only))
    if volumes:
        notes.append("bind mounts become hostPath volumes: they tie the pod to a node that has these paths, and "
                     "the restricted Pod Security Standard forbids them")
    network = spec.network or ("bridge" if spec.ports else "none")
    if network == "none":
        notes.append("network 'none' on the host: a pod always has a network; add a NetworkPolicy to isolate it (not generated)")
    elif network == "host":
        notes.append("network 'host' becomes hostNetwork: true: the pod shares its node's network namespace")
    elif network != "bridge":
        notes.append(f"Docker network {network!r} has no analogue: the pod joins the cluster network")
    notes.append(f"pidsLimit {spec.security.pids_limit} is not exported: Kubernetes limits pids per node (kubelet podPidsLimit)")
    if spec.security.user is None:
        notes.append(f"spec.security.user is unset: the pod runs as {NOBODY}, where the reconciler would use the "
                     "image's USER if it is numeric and not root")
    service = _unique([{"name": f"{port.protocol}-{port.published_port}", "port": port.published_port,
                        "targetPort": port.container_port, "protocol": port.protocol.upper()} for port in spec.ports],
                      ("port", "protocol"))
    if len(service) < len({(port.published_port, port.protocol, port.container_port) for port in spec.ports}):
        notes.append("one host port number maps to different container ports on different host addresses: "
                     "the Service serves only the first mapping")
    return container, volumes, service


def _native_runtime(name: str, spec: WorkloadSpec, models: dict[str, Model], notes: list[str]) -> tuple[Manifest, list[Volume], list[Manifest]]:
    container: Manifest = {"name": name, "image": PLACEHOLDER_IMAGE, "imagePullPolicy": "IfNotPresent"}
    if spec.engine is Engine.process:
        assert spec.command is not None
        notes.append(f"runtime native runs {spec.command[0]!r} on the host: a pod needs an image that carries it; "
                     f"replace image {PLACEHOLDER_IMAGE}")
        command: list[str] | None = list(spec.command)
        args = list(spec.args)
        if spec.port is not None:
            notes.append(f"the process must listen on the pod's address (0.0.0.0), not on loopback, for the Service "
                         f"and probes to reach port {spec.port}: check spec.args")
    elif spec.engine is Engine.gateway:
        notes.append("engine gateway routes to this host's workloads by the reconciler's routes file: on a cluster each "
                     f"model's Service is its endpoint; drop this workload or replace image {PLACEHOLDER_IMAGE}")
        command, args = None, list(spec.args)
    else:
        gpu = bool(spec.resources.gpus.wanted or (spec.llama_cpp and spec.llama_cpp.gpu_layers))
        image = ENGINE_IMAGES[spec.engine] + ("-cuda" if spec.engine is Engine.llama_cpp and gpu else "")
        notes.append(f"engine {spec.engine.value} runs natively on the host: a pod needs an image that carries its "
                     f"command, e.g. {image}; replace image {PLACEHOLDER_IMAGE}")
        in_pod, model_path = spec.model_copy(update={"host": "0.0.0.0"}), _model_path(spec, models, notes)
        rendered = engine_command(in_pod, model_path, _IMAGE_FACTS)
        if isinstance(rendered, Blocked) and in_pod.llama_cpp is not None:  # a chat format llama-server lacks
            notes.append(f"{rendered.message}: not exported; give the image's server a template of its own")
            rendered = engine_command(in_pod.model_copy(update={
                "llama_cpp": in_pod.llama_cpp.model_copy(update={"chat_format": None})}), model_path, _IMAGE_FACTS)
        assert not isinstance(rendered, Blocked)  # _IMAGE_FACTS names both servers and the chat format is dropped
        if spec.host not in ("0.0.0.0", "::"):
            notes.append("the engine binds 0.0.0.0 in the pod so that the Service and probes reach it")
        command, args = list(rendered.command), list(rendered.args)
        if spec.engine is Engine.llama_cpp:
            notes.append("llama.cpp flags are rendered for llama-server (a host without it runs llama-cpp-python, "
                         "whose flags and default health check differ)")
            if not rendered.executable_from_spec:
                command = None  # the image's entrypoint is llama-server; its path inside images varies
        if rendered.executable_from_spec:
            notes.append(f"the executable {rendered.command[0]!r} from the spec is a host path: the image must carry it there")
    if command is not None:
        container["command"] = command
    if args:
        container["args"] = args
    if spec.working_dir and spec.working_dir.startswith("/"):
        container["workingDir"] = spec.working_dir
    elif spec.working_dir:
        notes.append(f"spec.workingDir {spec.working_dir!r} is relative to the spec file's folder on the host: "
                     "not exported; set a workingDir inside the image")
    _env(container, spec)
    as_user = f", not as the host's user {spec.user}" if spec.user else ""
    notes.append(f"a native workload runs here under the container least-privilege defaults (uid 65534{as_user}, "
                 "read-only root filesystem, no capabilities): the image must work that way")
    service: list[Manifest] = []
    if spec.port is not None:
        container["ports"] = [{"containerPort": spec.port, "protocol": "TCP"}]
        service = [{"name": f"tcp-{spec.port}", "port": spec.port, "targetPort": spec.port, "protocol": "TCP"}]
        _exposure_notes([(spec.host, spec.port)], notes)
    return container, [], service


def _model_path(spec: WorkloadSpec, models: dict[str, Model], notes: list[str]) -> str:
    """Where the served model is expected in the pod; nothing puts it there, so the note says how."""
    assert spec.model is not None
    model = models.get(spec.model)
    source = model.spec.source if model else spec.model
    path = posixpath.join(MODELS_DIR, posixpath.basename(source.rstrip("/")) or spec.model)
    where = f"{source} on the host" if model else "it is not in the desired state"
    notes.append(f"Model {spec.model} ({where}) is expected at {path} in the pod: mount it there, e.g. from a "
                 "PersistentVolumeClaim (not generated)")
    return path


def _env(container: Manifest, spec: WorkloadSpec) -> None:
    if spec.env:
        container["env"] = [{"name": name, "value": value} for name, value in spec.env.items()]


def _exposure_notes(listens: list[tuple[str, int]], notes: list[str]) -> None:
    """A ClusterIP Service is wider than a loopback bind and narrower than an exposed one: say which."""
    local = [f"{_address(host)}:{port}" for host, port in listens if host in _LOOPBACK]
    wide = [f"{_address(host)}:{port}" for host, port in listens if host not in _LOOPBACK]
    if local:
        notes.append(f"the host bound {', '.join(local)} (loopback: this host only); the ClusterIP Service reaches "
                     "it from every pod in the cluster: add a NetworkPolicy to narrow that (not generated)")
    if wide:
        notes.append(f"the host exposed {', '.join(wide)} beyond loopback; the ClusterIP Service is reachable inside "
                     "the cluster only: add a LoadBalancer or Ingress to expose it (not generated)")


def _loopback_env_notes(spec: WorkloadSpec, listeners: dict[int, str], notes: list[str]) -> None:
    """A loopback URL in the environment reached a neighbour on the host; in a pod it is the pod itself."""
    for variable, value in spec.env.items():
        if (match := _LOOPBACK_URL.search(value)) is None:
            continue
        owner = listeners.get(int(match[1])) if match[1] else None
        hint = (f"Workload {owner} serves that port on the host: in the cluster use its Service, {owner}:{match[1]}"
                if owner else "in a pod that is the pod itself: use the Service name of what it should reach")
        notes.append(f"env {variable} names {match[0]}: {hint} (the value is exported as written)")


def _metadata(name: str, namespace: str | None, labels: dict[str, str], annotations: dict[str, str]) -> Manifest:
    metadata: Manifest = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _address(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _unique(items: list[Manifest], fields: tuple[str, ...]) -> list[Manifest]:
    """Two mappings of one port (say on two host addresses) are one container port and one Service port."""
    seen: dict[tuple[Any, ...], Manifest] = {}
    for item in items:
        seen.setdefault(tuple(item[field] for field in fields), item)
    return list(seen.values())
