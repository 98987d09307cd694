"""How each part of a WorkloadSpec reads in a pod: its update as a Deployment's rollout, its resources, health
checks as probes, its security context, its restart policy. What Kubernetes cannot express is said in `notes`. Pure."""

from __future__ import annotations

import copy
import math
from typing import Any

from reconciler.api.checks import HealthCheck
from reconciler.api.container import NOBODY
from reconciler.api.lifecycle import Backoff, RestartPolicy, RollbackMode
from reconciler.api.quantity import format_bytes
from reconciler.api.workload import Runtime, WorkloadSpec
from reconciler.diff.health import STARTUP_PERIOD_SECONDS

Manifest = dict[str, Any]


def deployment_rollout(spec: WorkloadSpec, notes: list[str]) -> Manifest:
    """A staged update as a Deployment proves one: Ready within its deadline, then available after the soak."""
    update = spec.update
    if update.rollback is RollbackMode.auto:
        notes.append("update.rollback Auto has no Deployment analogue: a failed rollout stops at "
                     "ProgressDeadlineExceeded; `kubectl rollout undo` restores the version before")
    deadline = whole_seconds(update.progress_deadline_seconds, "spec.update.progressDeadlineSeconds", notes, 1)
    soak = whole_seconds(update.soak_seconds, "spec.update.soakSeconds", notes, 0)
    if deadline <= soak:  # Kubernetes refuses it; here the deadline is for Ready, the soak comes after
        notes.append(f"progressDeadlineSeconds becomes {soak + deadline} (the deadline plus the soak): a Deployment "
                     "counts it to the end of minReadySeconds and must have it larger")
        deadline += soak
    return {"progressDeadlineSeconds": deadline, "minReadySeconds": soak}


def pod_resources(spec: WorkloadSpec, notes: list[str]) -> Manifest:
    """Memory is a hard limit on the host, so requests = limits; CPUs are a quota (a limit); GPUs are counted."""
    wanted, limits, requests = spec.resources, {}, {}
    if wanted.memory is not None:
        requests["memory"] = limits["memory"] = format_bytes(wanted.memory)
    if wanted.cpus is not None:
        limits["cpu"] = f"{math.ceil(round(wanted.cpus * 1000, 6))}m"
    gpus = wanted.gpus
    if gpus.wanted:
        limits["nvidia.com/gpu"] = str(gpus.wanted)
    if gpus.indices is not None:
        notes.append(f"GPU indices {gpus.indices} cannot be pinned: the device plugin assigns {gpus.wanted} GPU(s)")
    if gpus.min_memory is not None:
        notes.append(f"gpus.minMemory {format_bytes(gpus.min_memory)} is not enforced: no nodeSelector is inferred "
                     "(e.g. GPU feature discovery's nvidia.com/gpu.memory label); add one")
    return {key: value for key, value in (("limits", limits), ("requests", requests)) if value}


def pod_probes(check: HealthCheck, spec: WorkloadSpec, notes: list[str]) -> Manifest:
    """startupProbe: until the first success, probed every STARTUP_PERIOD_SECONDS for startupSeconds, as the
    reconciler does; readinessProbe: not ready after one failure (its `ready`); livenessProbe: failureThreshold."""
    handler: Manifest
    probe = check.http or check.tcp
    port = (probe.port if probe else None) or spec.default_port
    if check.http is not None:
        handler = {"httpGet": {"path": check.http.path, "port": port}}
        if check.http.expect_status != 200:
            notes.append(f"health.http.expectStatus {check.http.expect_status} is not expressible: Kubernetes counts "
                         "any status from 200 to 399 as healthy")
    elif check.tcp is not None:
        handler = {"tcpSocket": {"port": port}}
    else:
        assert check.exec is not None
        handler = {"exec": {"command": list(check.exec.command)}}
        if spec.runtime is Runtime.native:
            notes.append("the exec health check ran on the host; in the pod it runs inside the container")
    period = whole_seconds(check.period_seconds, "health.periodSeconds", notes)
    timeout = whole_seconds(check.timeout_seconds, "health.timeoutSeconds", notes)
    startup_period = math.ceil(min(check.period_seconds, STARTUP_PERIOD_SECONDS))
    startup: Manifest = {**copy.deepcopy(handler), "periodSeconds": startup_period, "timeoutSeconds": timeout,
                         "failureThreshold": max(1, math.ceil(check.startup_seconds / startup_period))}
    if check.initial_delay_seconds:
        startup["initialDelaySeconds"] = whole_seconds(check.initial_delay_seconds, "health.initialDelaySeconds", notes, 0)
    return {"startupProbe": startup,
            "readinessProbe": {**copy.deepcopy(handler), "periodSeconds": period, "timeoutSeconds": timeout, "failureThreshold": 1},
            "livenessProbe": {**copy.deepcopy(handler), "periodSeconds": period, "timeoutSeconds": timeout,
                              "failureThreshold": check.failure_threshold}}


def security_context(spec: WorkloadSpec) -> Manifest:
    """The reconciler's container defaults: no privilege gain, all capabilities dropped, read-only root, not root."""
    security = spec.security
    uid, _, gid = (security.user or NOBODY).partition(":")
    capabilities: Manifest = {"drop": ["ALL"]}
    if security.capabilities:
        capabilities["add"] = list(security.capabilities)
    context: Manifest = {"allowPrivilegeEscalation": False, "capabilities": capabilities, "privileged": False,
                         "readOnlyRootFilesystem": security.read_only_root_filesystem,
                         "runAsNonRoot": int(uid) != 0, "runAsUser": int(uid)}
    if gid:
        context["runAsGroup"] = int(gid)
    return context


def restart_notes(spec: WorkloadSpec, notes: list[str]) -> None:
    policy = spec.restart.policy
    if policy is not RestartPolicy.always:
        notes.append(f"restart policy {policy.value}: a Deployment always restarts its pod; a Job is the analogue (not generated)")
    if spec.restart.backoff != Backoff.model_validate({}):
        notes.append("spec.restart.backoff is not exported: the kubelet's own back-off (10s doubling to 5m) applies")
    if spec.activation.on_demand:
        notes.append("activation OnDemand is not exported: the Deployment runs one replica always (scale to zero needs "
                     "an autoscaler such as KEDA's HTTP add-on)")


def whole_seconds(seconds: float, field: str, notes: list[str], minimum: int = 1) -> int:
    """Kubernetes takes whole seconds: round up (never probe sooner or give up earlier), and say so."""
    whole = max(minimum, math.ceil(seconds))
    if whole != seconds:
        notes.append(f"{field} {seconds:g} becomes {whole} (Kubernetes takes whole seconds)")
    return whole
