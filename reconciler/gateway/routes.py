"""Which local workloads serve each Model, or why none does: computed from the statuses the files show. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from reconciler.api.activation import IDLE_PHASE
from reconciler.api.status import ConditionStatus, Placement, ResourceStatus

ROUTES_VERSION = 1
# Phases from which a workload becomes Ready without anyone acting: a request may wait for it a while.
_ON_ITS_WAY = frozenset({"Starting", "Pending", "Progressing"})


class RouteState(str, Enum):
    ready = "Ready"  # at least one backend
    starting = "Starting"  # none yet, one is on its way: wait a bounded time
    unavailable = "Unavailable"  # none, and none is coming by itself: the reason says why
    idle = "Idle"  # none: an on-demand workload that a request starts (the request waits for it, bounded)


class _Shape(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class Backend(_Shape):
    workload: str
    url: str  # the engine's OpenAI base, e.g. http://127.0.0.1:8080/v1


class OnDemand(_Shape):
    """The on-demand workload that serves a Model: the gateway records each request for it (gateway/demand.py)."""

    workload: str
    concurrency: int
    queue_depth: int
    startup_seconds: float  # a request waits at most this long for it to start (and the gateway's own limit)


class Route(_Shape):
    state: RouteState
    backends: tuple[Backend, ...] = ()
    reason: str = ""  # the serving workload's Ready reason (CamelCase), when there is no backend
    message: str = ""
    workload: str | None = None  # the workload the reason is about
    on_demand: OnDemand | None = None


class RouteTable(_Shape):
    version: int = ROUTES_VERSION
    models: dict[str, Route] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)  # alias -> the Model it names
    ambiguous: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # alias -> the Models that all declare it

    def describe(self, model: str) -> str:
        if model in self.ambiguous:
            return f"AmbiguousModel: an alias of {', '.join(f'Model/{name}' for name in self.ambiguous[model])}"
        if model in self.aliases:
            return f"alias of Model/{self.aliases[model]}"
        route = self.models[model]
        if route.backends:
            return ", ".join(f"Workload/{backend.workload} {backend.url}" for backend in route.backends)
        about = f"Workload/{route.workload}: " if route.workload else ""
        return f"{route.state.value}: {about}{route.reason}: {route.message}"


@dataclass(frozen=True)
class Serving:
    """One workload that serves a Model, as its status shows it now (None: not reported yet)."""

    workload: str
    model: str
    status: ResourceStatus | None
    on_demand: OnDemand | None = None


def route_table(models: Mapping[str, Sequence[str]], serving: Iterable[Serving]) -> RouteTable:
    """`models`: the Models the desired state declares, with their aliases; a workload may name one that is not
    there (its status says ModelNotFound), which is routed too, so a client hears that reason, not 'unknown model'."""
    by_model: dict[str, list[Serving]] = {name: [] for name in models}
    for entry in serving:
        by_model.setdefault(entry.model, []).append(entry)
    declared: dict[str, list[str]] = {}
    for name, aliases in models.items():
        for alias in aliases:
            if alias not in by_model:  # a Model's own name always means that Model
                declared.setdefault(alias, []).append(name)
    return RouteTable(models={name: _route(sorted(entries, key=lambda e: e.workload))
                              for name, entries in sorted(by_model.items())},
                      aliases={alias: names[0] for alias, names in sorted(declared.items()) if len(names) == 1},
                      ambiguous={alias: tuple(sorted(names)) for alias, names in sorted(declared.items()) if len(names) > 1})


def _route(entries: list[Serving]) -> Route:
    route = _serving(entries)
    on_demand = next((entry.on_demand for entry in entries if entry.on_demand is not None), None)
    return route.model_copy(update={"on_demand": on_demand}) if on_demand is not None else route


def _serving(entries: list[Serving]) -> Route:
    backends = tuple(Backend(workload=e.workload, url=e.status.endpoints[0]) for e in entries if _ready_here(e.status))
    if backends:
        return Route(state=RouteState.ready, backends=backends)
    if not entries:
        return Route(state=RouteState.unavailable, reason="NoWorkload",
                     message="no Workload serves this Model: add one whose spec.model names it")
    idle = next((e for e in entries if e.status is not None and e.status.phase == IDLE_PHASE), None)
    if idle is not None and idle.status is not None:
        return Route(state=RouteState.idle, reason=IDLE_PHASE, message=idle.status.message, workload=idle.workload)
    coming = next((e for e in entries if e.status is None or e.status.phase in _ON_ITS_WAY), None)
    if coming is not None:
        reason, message = _ready_reason(coming.status) if coming.status else ("Pending", "not reconciled yet")
        return Route(state=RouteState.starting, reason=reason, message=message, workload=coming.workload)
    first = entries[0]
    assert first.status is not None
    reason, message = _ready_reason(first.status)
    if first.status.placement is Placement.hosted:
        message += "; placement is hosted: this gateway has no hosted route yet, so it does not forward there"
    return Route(state=RouteState.unavailable, reason=reason, message=message, workload=first.workload)


def _ready_here(status: ResourceStatus | None) -> bool:
    if status is None or status.placement is not Placement.local or not status.endpoints:
        return False
    return _ready_condition(status) is True


def _ready_condition(status: ResourceStatus) -> bool | None:
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    return None if ready is None else ready.status is ConditionStatus.true


def _ready_reason(status: ResourceStatus) -> tuple[str, str]:
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    if ready is None:
        return status.phase, status.message
    return ready.reason, ready.message
