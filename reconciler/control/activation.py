"""On-demand workloads: the gateway's demand records read, and room made for a start by stopping idle ones.

The gateway writes STATE/gateway/demand/NAME.json atomically on each request's arrival and end (gateway/demand.py);
the daemon watches that folder and passes the on-demand workloads when one changes. Files, not a socket: they
survive a restart of either side (the idle clock is in them), and the daemon stays the only thing that starts or
stops a workload. The diff decides start and idle stop (diff/activation.py); the eviction plan is diff/eviction.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psutil

from reconciler.api.activation import Demand
from reconciler.api.kinds import Workload
from reconciler.api.meta import ResourceKey
from reconciler.api.policy import Policy
from reconciler.base.atomic import UnsafeFile, read_bounded
from reconciler.control.workloads import WorkloadRenderer
from reconciler.diff.activation import in_flight, next_idle_look
from reconciler.diff.engines import Blocked
from reconciler.diff.eviction import Resident, plan_room
from reconciler.diff.gpus import assign_gpus
from reconciler.drive.dispatch import Drivers
from reconciler.gate.resources import memory_problem
from reconciler.gate.verdict import governing
from reconciler.gateway.spool import demand_dir, demand_file
from reconciler.load.desired import DesiredEntry, DesiredState
from reconciler.observe import clock
from reconciler.observe.processes import ProcessObservation, ProcessState
from reconciler.record.recorder import Recorder

log = logging.getLogger("reconciler")

MAX_DEMAND_BYTES = 4096


def on_demand(desired: DesiredState) -> list[Workload]:
    return [entry.resource for entry in desired.resources.values()
            if isinstance(entry.resource, Workload) and entry.resource.spec.activation.on_demand]


def on_demand_keys(desired: DesiredState) -> list[ResourceKey]:
    return [ResourceKey("Workload", workload.name) for workload in on_demand(desired)]


class Activation:
    def __init__(self, state_dir: Path, renderer: WorkloadRenderer, drivers: Drivers, recorder: Recorder) -> None:
        self.directory = demand_dir(state_dir)
        self._state_dir = state_dir
        self.renderer, self.drivers, self.recorder = renderer, drivers, recorder
        self._waits: dict[str, str] = {}  # workload -> why its requested start waits for room
        self._lock = threading.Lock()

    def demand(self, workload: Workload) -> Demand | None:
        """The gateway's record for an on-demand workload (None for others, or none yet). Counts in flight from a
        gateway that is gone are none: its clients are gone with it."""
        if not workload.spec.activation.on_demand:
            return None
        path = demand_file(self._state_dir, workload.name)
        try:
            raw = read_bounded(path, MAX_DEMAND_BYTES, root=self._state_dir)  # the gateway's user owns the folder
            demand = Demand.model_validate_json(raw)
        except FileNotFoundError:
            return None
        except (OSError, UnsafeFile, ValueError) as problem:  # pydantic's ValidationError is a ValueError
            log.warning("%s: unreadable, taken as no request: %s", path, problem)
            return None
        if demand.in_flight and (demand.gateway_pid is None or not psutil.pid_exists(demand.gateway_pid)):
            return demand.model_copy(update={"in_flight": 0})
        return demand

    def room_wait(self, name: str) -> str | None:
        with self._lock:
            return self._waits.get(name)

    def make_room(self, desired: DesiredState, key: ResourceKey, policy: Policy | None) -> None:
        """Before an on-demand workload's start for a waiting request (under the admission lock, so no other start
        is judged meanwhile): stop the least recently used idle on-demand workloads it needs the room of."""
        entry = desired.resources.get(key)
        workload = entry.resource if entry is not None and isinstance(entry.resource, Workload) else None
        with self._lock:
            self._waits.pop(key.name, None)
        if workload is None or not workload.spec.activation.on_demand:
            return
        demand = self.demand(workload)
        if not in_flight(demand) or self.drivers.observe(key.name, False).state not in (ProcessState.exited,
                                                                                        ProcessState.absent):
            return
        residents = self._residents(desired, workload.name)
        room = plan_room(list(residents.values()), self._fits(desired, workload, policy, residents))
        if room.wait is not None:
            with self._lock:
                self._waits[key.name] = room.wait
        for name in room.evict:
            self._evict(desired, name, workload, demand, room.shortage or "")

    def _residents(self, desired: DesiredState, starting: str) -> dict[str, Resident]:
        residents = {}
        for other in on_demand(desired):
            observed = self.drivers.observe(other.name, False)
            if other.name == starting or observed.state is not ProcessState.running or observed.record is None:
                continue
            demand = self.demand(other)
            last = (demand or Demand()).last_active(observed.record.started_at)
            residents[other.name] = Resident(other.name, in_flight(demand), last)
        return residents

    def _fits(self, desired: DesiredState, workload: Workload, policy: Policy | None,
              residents: dict[str, Resident]) -> Callable[[frozenset[str]], str | None]:
        """Why the start would not fit with `stopped` stopped: the renderer's GPU assignment and the gate's memory rule."""
        governing_spec, source = governing(policy)
        rules = governing_spec.resources
        request = workload.spec.resources.gpus
        request = request if rules.gpu_sharing else request.model_copy(update={"shareable": False})
        taken, shared = self.renderer.gpus_held(workload.name, desired, self.renderer.remembered, rules.gpu_sharing) \
            if request.wanted else ({}, {})
        use = self.renderer.memory_use(desired, workload)
        by_name = {other.name: other for other in on_demand(desired)}
        held = {name: self.renderer.commitment(desired, by_name[name])[0] for name in residents}

        def fits(stopped: frozenset[str]) -> str | None:
            holders = {f"Workload/{name}" for name in stopped}
            if request.wanted:
                gpus = assign_gpus(request, self.renderer.inventory,
                                   {gpu: holder for gpu, holder in taken.items() if holder not in holders}, (),
                                   {gpu: tuple(s for s in sharers if s[0] not in holders) for gpu, sharers in shared.items()})
                if isinstance(gpus, Blocked):
                    return gpus.message
            if use is not None:
                freed = sum(held[name] for name in stopped)
                return memory_problem(replace(use, committed=use.committed - freed), rules, source)
            return None
        return fits

    def _evict(self, desired: DesiredState, name: str, starting: Workload, demand: Demand | None, shortage: str) -> None:
        key = ResourceKey("Workload", name)
        entry = desired.resources[key]
        assert isinstance(entry.resource, Workload)
        if in_flight(self.demand(entry.resource)):
            return  # a request arrived since the plan: it is served, and the start waits for the next look
        asked = f"request {demand.request} for Model/{demand.model}" if demand and demand.request else "a request"
        cause = f"evicted: idle, and Workload/{starting.name} needs its room to start for {asked}"
        log.info("%s: stop (%s)", key, cause)
        ended = self.drivers.stop(name, entry.resource.spec.termination_grace_period_seconds, forget=False)
        line = {"time": clock.now().isoformat(), "resource": str(key), "event": "evicted", "cause": cause,
                "for": f"Workload/{starting.name}", "request": demand.request if demand else "",
                "model": demand.model if demand else "", "shortage": shortage}
        if ended is not None:
            line["stoppedPid"] = ended.pid
        self.recorder.evidence(entry.file, line)

    def next_look(self, entry: DesiredEntry | None, after: ProcessObservation | None) -> float | None:
        """A running on-demand workload with nothing in flight is looked at again when its idle time is up."""
        if entry is None or not isinstance(entry.resource, Workload) or after is None or after.record is None \
                or after.running_pid is None:
            return None
        return next_idle_look(entry.resource, self.demand(entry.resource), after.record.started_at, clock.now())
