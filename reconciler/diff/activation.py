"""Diff for on-demand workloads: started while a request waits for them, stopped once idle. Pure.

Level-triggered like the rest: whether one should run is a function of the gateway's demand record (requests in
flight, the last one's end) and the clock, so a restarted daemon or gateway reaches the same answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler.api.activation import Demand
from reconciler.api.kinds import Workload
from reconciler.api.status import ExitInfo
from reconciler.diff.engines import Blocked
from reconciler.observe.processes import ProcessObservation, ProcessState

# What others hold now: an idle on-demand workload blocked only by these is still Idle (a start makes room or waits).
HELD_ELSEWHERE = frozenset({"GPUInUse", "InsufficientGPUs"})


@dataclass(frozen=True)
class OnDemandStep:
    """What activation decides for an on-demand workload: stop it (idle), or leave it not running, and why."""

    stop: bool
    cause: str


def in_flight(demand: Demand | None) -> int:
    return demand.in_flight if demand is not None else 0


def idle_for(demand: Demand | None, started_at: datetime | None, now: datetime) -> float:
    """Seconds since anything asked for it (its start counts as asking); 0 while a request is in flight."""
    since = (demand or Demand()).last_active(started_at)
    if in_flight(demand) or since is None:
        return 0.0
    return max(0.0, (now - since).total_seconds())


def on_demand_step(workload: Workload, demand: Demand | None, observed: ProcessObservation, room: str | None,
                   blocked: Blocked | None, now: datetime) -> OnDemandStep | None:
    """Activation's decision for an on-demand workload (stay idle, wait for room, stop when idle); None: plan it
    like any workload (start it for the request waiting, restart, recreate, probe). `room`: why a start for a
    waiting request must wait for memory or GPUs that busy on-demand workloads hold. `blocked`: what keeps it from
    starting here; unless others hold it, it says so (a missing model is not Idle: no request could start it)."""
    activation = workload.spec.activation
    if not activation.on_demand or observed.state is ProcessState.unknown:
        return None
    running = observed.record if observed.state is ProcessState.running else None
    if running is not None:
        idle = idle_for(demand, running.started_at, now)
        if in_flight(demand) or idle < activation.idle_seconds:
            return None
        return OnDemandStep(True, f"idle for {idle:.0f} s (idleSeconds {activation.idle_seconds:g}), no request in flight")
    if blocked is not None and blocked.reason not in HELD_ELSEWHERE:
        return None
    if not in_flight(demand):
        ended = f"{observed.exit.describe()}; " if observed.exit is not None else ""
        return OnDemandStep(False, f"on demand: {ended}starts when a request for Model/{workload.spec.model} "
                                   "reaches the gateway")
    if room is not None:
        return OnDemandStep(False, f"a request waits: {room}")
    return None


def next_idle_look(workload: Workload, demand: Demand | None, started_at: datetime | None, now: datetime) -> float | None:
    """Seconds until a running on-demand workload with nothing in flight has been idle long enough to stop."""
    if not workload.spec.activation.on_demand or started_at is None or in_flight(demand):
        return None
    return max(0.0, workload.spec.activation.idle_seconds - idle_for(demand, started_at, now))


def restarts_on_exit(workload: Workload, demand: Demand | None, exit_info: ExitInfo) -> bool:
    """An on-demand workload that ended with no request waiting is idle, not failed: no back-off, no restart. Nor is
    one the reconciler stopped (idle, evicted), though a request may have arrived before its exit was noted."""
    return not workload.spec.activation.on_demand or in_flight(demand) > 0 and not exit_info.stopped_by_reconciler
