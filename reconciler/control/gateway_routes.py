"""Publishes the gateway's routes from the statuses the recorder holds (the ones the status files show)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from reconciler.api.kinds import Model, Workload
from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.status import ResourceStatus
from reconciler.api.workload import Engine, Runtime
from reconciler.base.atomic import UnsafeFile
from reconciler.diff.engines import startup_budget
from reconciler.gateway.routes import ContainerClient, OnDemand, RouteTable, Serving, route_table
from reconciler.gateway.routes_file import write_routes
from reconciler.load.desired import DesiredState

log = logging.getLogger("reconciler")


def routes_of(desired: DesiredState, status_of: Mapping[ResourceKey, ResourceStatus],
              judged: Mapping[ResourceKey, str] | None = None) -> RouteTable:
    """Every Model of the desired state, and each Workload's model, with the workloads' statuses. `judged`: the
    spec hash each status was judged for (None: the current ones). Pure."""
    models = {key.name: entry.resource.spec.aliases for key, entry in desired.resources.items()
              if isinstance(entry.resource, Model)}
    serving = [Serving(key.name, entry.resource.spec.model, status_of.get(key), entry.resource.spec.fallback,
                       judged is None or judged.get(key) == entry.spec_hash, on_demand_route(entry.resource))
               for key, entry in desired.resources.items()
               if isinstance(entry.resource, Workload) and entry.resource.spec.model]
    return route_table(models, serving).model_copy(update={"clients": container_clients(desired, status_of)})


def on_demand_route(workload: Workload) -> OnDemand | None:
    spec = workload.spec
    if not spec.activation.on_demand:
        return None
    return OnDemand(workload=workload.name, concurrency=spec.activation.concurrency,
                    queue_depth=spec.activation.queue_depth, startup_seconds=startup_budget(spec))


def container_clients(desired: DesiredState, status_of: dict[ResourceKey, ResourceStatus]) -> dict[str, ContainerClient]:
    """Each running container that uses a gateway, by the addresses its status shows: whom a gateway admits on the
    bridge, and to which models. Pure."""
    workloads = {key: entry.resource.spec for key, entry in desired.resources.items() if isinstance(entry.resource, Workload)}
    ports = {key.name: spec.port for key, spec in workloads.items() if spec.engine is Engine.gateway and spec.port}
    clients: dict[str, ContainerClient] = {}
    for key, spec in workloads.items():
        status = status_of.get(key)
        if spec.runtime is not Runtime.container or status is None or not status.addresses:
            continue
        gateways: dict[int, tuple[str, ...] | None] = {}
        for use in spec.uses:
            port = ports.get(use.workload)
            if port is None:
                continue
            everything = use.models is None or (port in gateways and gateways[port] is None)
            gateways[port] = None if everything else tuple(sorted({*(gateways.get(port) or ()), *(use.models or ())}))
        clients |= {address: ContainerClient(workload=key.name, gateways=gateways)
                    for address in status.addresses} if gateways else {}
    return clients


def served_models(desired: DesiredState) -> dict[str, str]:
    """Workload name -> the model it serves."""
    return {key.name: entry.resource.spec.model for key, entry in desired.resources.items()
            if isinstance(entry.resource, Workload) and entry.resource.spec.model}


def gateway_users(desired: DesiredState) -> list[tuple[str, Runtime, tuple[str, ...] | None]]:
    """Each workload that declares it uses a gateway: (name, runtime, the Models or aliases it names; None: all)."""
    gateways = {key.name for key, entry in desired.resources.items()
                if isinstance(entry.resource, Workload) and entry.resource.spec.engine is Engine.gateway}
    return [(key.name, entry.resource.spec.runtime, None if use.models is None else tuple(use.models))
            for key, entry in sorted(desired.resources.items()) if isinstance(entry.resource, Workload)
            for use in entry.resource.spec.uses if use.workload in gateways]


def gateway_endpoints(desired: DesiredState, statuses: list[ResourceStatus]) -> list[str]:
    """Where the declared gateways serve now."""
    gateways = {key for key, entry in desired.resources.items()
                if isinstance(entry.resource, Workload) and entry.resource.spec.engine is Engine.gateway}
    return [endpoint for status in statuses if ResourceKey(status.kind, status.name) in gateways
            for endpoint in status.endpoints]


def judged_specs(records: Mapping[ResourceKey, ResourceRecord]) -> dict[ResourceKey, str]:
    return {key: record.spec_hash for key, record in records.items()}


def gateway_routes(desired: DesiredState, statuses: list[ResourceStatus],
                   records: Mapping[ResourceKey, ResourceRecord]) -> RouteTable | None:
    """The routes to show beside `statuses` (as `reconciler status` judges them now); None: no gateway is declared."""
    if not any(isinstance(entry.resource, Workload) and entry.resource.spec.engine is Engine.gateway
               for entry in desired.resources.values()):
        return None
    return routes_of(desired, {ResourceKey(status.kind, status.name): status for status in statuses},
                     judged_specs(records))


def routed_keys(desired: DesiredState) -> tuple[ResourceKey, ...]:
    """The workloads whose status and judged spec `routes_of` reads: those serving a model, and containers that use
    something (a gateway admits them by address). Pure."""
    return tuple(key for key, entry in desired.resources.items() if isinstance(entry.resource, Workload)
                 and (entry.resource.spec.model or (entry.resource.spec.runtime is Runtime.container
                                                    and entry.resource.spec.uses)))


class RoutesPublisher:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: RouteTable | None = None
        self._inputs: tuple[object, ...] | None = None  # what the table written was made from
        self._routed: tuple[DesiredState | None, tuple[ResourceKey, ...]] = (None, ())
        self._lock = threading.Lock()  # workers finish passes concurrently: compare and write as one step

    def publish(self, desired_now: Callable[[], DesiredState], routed_now: Callable[[tuple[ResourceKey, ...]], tuple[
            Mapping[ResourceKey, ResourceStatus], Mapping[ResourceKey, str]]]) -> None:
        """`desired_now`: the desired state; `routed_now`: the statuses of the routed workloads it is given and the
        spec hashes they were judged for. Both are read under this lock so that a pass that finished earlier never
        writes its older view over a later one's. Every reconcile publishes: the table is made again only when what
        it is made from changed (making it reads every resource, and a pass of N reconciles made it N times), and
        only the routed workloads are read (reading all of them each time made a pass quadratic)."""
        with self._lock:
            desired = desired_now()
            if self._routed[0] is not desired:
                self._routed = (desired, routed_keys(desired))
            statuses, judged = routed_now(self._routed[1])
            inputs = (desired, *((statuses.get(key), judged.get(key)) for key in self._routed[1]))
            if inputs == self._inputs and self.path.exists():
                return
            table = routes_of(desired, statuses, judged)
            if table != self._written or not self.path.exists():
                try:
                    write_routes(self.path, table)
                except (UnsafeFile, OSError) as problem:
                    log.error("the gateway's routes are not updated: %s", problem)
                    return
            self._written, self._inputs = table, inputs
