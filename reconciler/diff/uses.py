"""What a workload's `uses` mean here: which used workloads it still waits for, and the endpoint each one is given
as this workload reaches it (loopback natively; from a container, the host's address on its bridge). Pure."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.api.status import ConditionStatus, ResourceStatus
from reconciler.api.workload import Engine, Runtime, WorkloadSpec
from reconciler.diff.engines import Blocked, reachable_host

WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"
# The name a container resolves to the host's address on its bridge (Docker's host-gateway), and that mapping.
HOST_FROM_CONTAINERS = "host.docker.internal"
HOST_GATEWAY = "host-gateway"


def waiting_for(spec: WorkloadSpec, statuses: Mapping[str, ResourceStatus | None], running: bool = False
                ) -> Blocked | None:
    """Why `spec` may not start yet: a used workload that is not Ready (its status as the files show it; `statuses`
    holds the declared ones). One that runs waits only for a used workload gone from the desired state: started
    without that endpoint it would lose it, while one that is merely not Ready is its readiness's business."""
    waits = []
    for use in spec.uses:
        if running and use.workload in statuses:
            continue
        status = statuses.get(use.workload)
        ready = next((c for c in status.conditions if c.type == "Ready"), None) if status else None
        if ready is None or ready.status is not ConditionStatus.true:
            why = f"{ready.reason}: {ready.message}" if ready else "not reconciled yet"
            waits.append(f"Workload/{use.workload} ({why})" if use.workload in statuses
                         else f"Workload/{use.workload} (not in the desired state)")
    if not waits:
        return None
    return Blocked(WAITING_FOR_DEPENDENCIES, f"starts once it is Ready: {'; '.join(waits)}")


def use_endpoints(spec: WorkloadSpec, used: Mapping[str, WorkloadSpec]) -> dict[str, str] | Blocked:
    """The environment the uses give: one URL per use, as `spec`'s runtime reaches the used workload. A container
    reaches only a gateway (the one server that also listens on the bridge, and admits it by its address)."""
    env = {}
    for index, use in enumerate(spec.uses):
        target = used.get(use.workload)
        if target is None:
            continue  # not declared (yet): waiting_for says so, and nothing starts meanwhile
        gateway = target.engine is Engine.gateway and target.runtime is Runtime.native
        if use.models is not None and not gateway:
            return Blocked("InvalidUse", f"spec.uses[{index}].models: Workload/{use.workload} is not a gateway, "
                                         "which is what admits a client per model")
        if spec.runtime is Runtime.container and not gateway:
            return Blocked("InvalidUse", f"spec.uses[{index}]: Workload/{use.workload} is not reachable from a "
                                         f"container (only engine gateway also listens on the bridge): use a gateway")
        port = target.port if target.runtime is Runtime.native else None
        if port is None:
            return Blocked("InvalidUse", f"spec.uses[{index}]: Workload/{use.workload} declares no spec.port to reach")
        host = HOST_FROM_CONTAINERS if spec.runtime is Runtime.container else reachable_host(target.host)
        env[use.env] = f"http://{host}:{port}{use.path}"
    return env


def use_cycle(name: str, workloads: Mapping[str, WorkloadSpec]) -> Blocked | None:
    """Workloads that wait for each other would never start: a cycle through `name` is refused, named."""
    visited: set[str] = set()

    def back_to_name(path: list[str]) -> list[str] | None:
        for use in workloads[path[-1]].uses if path[-1] in workloads else ():
            if use.workload == name:
                return [*path, name]
            if use.workload not in visited:
                visited.add(use.workload)
                found = back_to_name([*path, use.workload])
                if found:
                    return found
        return None

    cycle = back_to_name([name])
    if cycle is None:
        return None
    return Blocked("InvalidUse", f"spec.uses makes a cycle ({' -> '.join(cycle)}): each would wait for the next "
                                 "to be Ready, and none would start")


def container_users(gateway: str, workloads: Mapping[str, WorkloadSpec]) -> list[str]:
    """The container workloads that declare a use of `gateway`: it listens on the bridge for them."""
    return sorted(name for name, spec in workloads.items()
                  if spec.runtime is Runtime.container and any(use.workload == gateway for use in spec.uses))
