"""Publishes the gateway's routes from the statuses the recorder holds (the ones the status files show)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from reconciler.api.kinds import Model, Workload
from reconciler.api.meta import ResourceKey
from reconciler.api.status import ResourceStatus
from reconciler.api.workload import Engine
from reconciler.base.atomic import UnsafeFile
from reconciler.diff.engines import startup_budget
from reconciler.gateway.routes import OnDemand, RouteTable, Serving, route_table
from reconciler.gateway.routes_file import write_routes
from reconciler.load.desired import DesiredState

log = logging.getLogger("reconciler")


def routes_of(desired: DesiredState, status_of: dict[ResourceKey, ResourceStatus]) -> RouteTable:
    """Every Model of the desired state, and each Workload's model, with the workloads' statuses. Pure."""
    models = {key.name: entry.resource.spec.aliases for key, entry in desired.resources.items()
              if isinstance(entry.resource, Model)}
    serving = [Serving(key.name, entry.resource.spec.model, status_of.get(key), on_demand_route(entry.resource))
               for key, entry in desired.resources.items()
               if isinstance(entry.resource, Workload) and entry.resource.spec.model]
    return route_table(models, serving)


def on_demand_route(workload: Workload) -> OnDemand | None:
    spec = workload.spec
    if not spec.activation.on_demand:
        return None
    return OnDemand(workload=workload.name, concurrency=spec.activation.concurrency,
                    queue_depth=spec.activation.queue_depth, startup_seconds=startup_budget(spec))


def gateway_routes(desired: DesiredState, statuses: list[ResourceStatus]) -> RouteTable | None:
    """The routes to show beside `statuses` (as `reconciler status` judges them now); None: no gateway is declared."""
    if not any(isinstance(entry.resource, Workload) and entry.resource.spec.engine is Engine.gateway
               for entry in desired.resources.values()):
        return None
    return routes_of(desired, {ResourceKey(status.kind, status.name): status for status in statuses})


class RoutesPublisher:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: RouteTable | None = None
        self._lock = threading.Lock()  # workers finish passes concurrently: compare and write as one step

    def publish(self, now: Callable[[], tuple[DesiredState, dict[ResourceKey, ResourceStatus]]]) -> None:
        """`now`: the desired state and statuses, read under this lock so that a pass that finished earlier never
        writes its older view over a later one's."""
        with self._lock:
            table = routes_of(*now())
            if table == self._written and self.path.exists():
                return
            try:
                write_routes(self.path, table)
            except (UnsafeFile, OSError) as problem:
                log.error("the gateway's routes are not updated: %s", problem)
                return
            self._written = table
