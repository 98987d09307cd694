"""Which local workloads serve each Model, or why none does: computed from the statuses the files show. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from reconciler.api.activation import IDLE_PHASE
from reconciler.api.fallback import Context, Fallback, SecretRef
from reconciler.api.status import ConditionStatus, Placement, ResourceStatus

ROUTES_VERSION = 1
# Phases from which a workload becomes Ready without anyone acting: a request may wait for it a while.
_ON_ITS_WAY = frozenset({"Starting", "Pending", "Progressing"})


class RouteState(str, Enum):
    ready = "Ready"  # at least one backend
    hosted = "Hosted"  # none here: the serving workload's placement is hosted, with consent
    starting = "Starting"  # none yet, one is on its way: wait a bounded time
    unavailable = "Unavailable"  # none, and none is coming by itself: the reason says why
    idle = "Idle"  # none: an on-demand workload that a request starts (the request waits for it, bounded)


class _Shape(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class Backend(_Shape):
    workload: str
    url: str  # the engine's OpenAI base, e.g. http://127.0.0.1:8080/v1


class HostedRoute(_Shape):
    """Where a hosted workload's requests go, and what may be sent: the key by reference only, read per request."""

    workload: str
    provider: str
    base_url: str
    model: str  # the provider's name for it
    region: str
    context: tuple[Context, ...]
    api_key: SecretRef


class OnDemand(_Shape):
    """The on-demand workload that serves a Model: the gateway records each request for it (gateway/demand.py)."""

    workload: str
    concurrency: int
    queue_depth: int
    startup_seconds: float  # a request waits at most this long for it to start (and the gateway's own limit)


class Route(_Shape):
    state: RouteState
    backends: tuple[Backend, ...] = ()
    hosted: HostedRoute | None = None
    reason: str = ""  # the serving workload's Ready reason (CamelCase), when there is no backend
    message: str = ""
    workload: str | None = None  # the workload the reason is about
    on_demand: OnDemand | None = None


class ContainerClient(_Shape):
    """A running container that declared it uses a gateway: admitted on the bridge side by its address."""

    workload: str
    gateways: dict[int, tuple[str, ...] | None]  # the port of each gateway it uses -> the Models it may ask (None: all)

    def refusal(self, port: int, model: str | None, aliases: Mapping[str, str]) -> str | None:
        """Why it may not ask the gateway on `port` for `model` (None: any request there), if it may not."""
        if port not in self.gateways:
            return f"Workload/{self.workload} does not declare it uses this gateway (spec.uses)"
        allowed = self.gateways[port]
        if model is None or allowed is None or model in allowed or aliases.get(model) in allowed:
            return None
        return f"Workload/{self.workload} may use only {', '.join(allowed)} here (spec.uses[].models)"


class RouteTable(_Shape):
    version: int = ROUTES_VERSION
    models: dict[str, Route] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)  # alias -> the Model it names
    ambiguous: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # alias -> the Models that all declare it
    clients: dict[str, ContainerClient] = Field(default_factory=dict)  # a container's address -> what it may use

    def describe(self, model: str) -> str:
        if model in self.ambiguous:
            return f"AmbiguousModel: an alias of {', '.join(f'Model/{name}' for name in self.ambiguous[model])}"
        if model in self.aliases:
            return f"alias of Model/{self.aliases[model]}"
        route = self.models[model]
        if route.backends:
            return ", ".join(f"Workload/{backend.workload} {backend.url}" for backend in route.backends)
        if route.hosted:
            hosted = route.hosted
            return (f"Hosted: Workload/{hosted.workload} at {hosted.provider} ({hosted.region}) {hosted.base_url}, "
                    f"model {hosted.model}, sends {', '.join(item.value for item in hosted.context)}")
        about = f"Workload/{route.workload}: " if route.workload else ""
        return f"{route.state.value}: {about}{route.reason}: {route.message}"


@dataclass(frozen=True)
class Serving:
    """One workload that serves a Model, as its status shows it now (None: not reported yet)."""

    workload: str
    model: str
    status: ResourceStatus | None
    fallback: Fallback | None = None
    current: bool = True  # the status was judged for the spec the desired state holds now
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
    coming = next((e for e in entries if e.status is None or e.status.phase in _ON_ITS_WAY or _rejudged(e)), None)
    if coming is not None:
        if coming.status is None:
            reason, message = "Pending", "not reconciled yet"
        elif _rejudged(coming):
            reason, message = "Pending", "its spec changed: where it runs is judged again on the next pass"
        else:
            reason, message = _ready_reason(coming.status)
        return Route(state=RouteState.starting, reason=reason, message=message, workload=coming.workload)
    hosted = next((e for e in entries if _hosted_now(e)), None)
    if hosted is not None:
        return Route(state=RouteState.hosted, hosted=_hosted_route(hosted))
    first = entries[0]
    assert first.status is not None
    reason, message = _ready_reason(first.status)
    return Route(state=RouteState.unavailable, reason=reason, message=message, workload=first.workload)


def _hosted_now(entry: Serving) -> bool:
    """Its status, judged for the spec the desired state holds now, says hosted and Ready."""
    status = entry.status
    return (entry.current and status is not None and entry.fallback is not None
            and status.placement is Placement.hosted and _ready_condition(status) is True)


def _rejudged(entry: Serving) -> bool:
    """Hosted by a status judged for an earlier spec: consent covers one exact spec, so nothing is sent meanwhile."""
    return not entry.current and entry.status is not None and entry.status.placement is Placement.hosted


def _hosted_route(entry: Serving) -> HostedRoute:
    fallback = entry.fallback
    assert fallback is not None
    return HostedRoute(workload=entry.workload, provider=fallback.provider, base_url=fallback.base_url,
                       model=fallback.model, region=fallback.region, context=tuple(fallback.context),
                       api_key=fallback.api_key)


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
