"""Which idle on-demand workloads to stop so that another one's start fits. Pure.

`fits(stopped)` says why the start would not fit if the named workloads were stopped (None: it fits); the caller
builds it from the same GPU assignment and memory rule the gate uses, so this plan and the gate cannot disagree."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

_NEVER = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Resident:
    """A running on-demand workload that a start might stop."""

    name: str
    in_flight: int  # requests it is serving: never stopped while any is
    last_active: datetime | None  # its last request's arrival or end: the least recently used goes first


@dataclass(frozen=True)
class Room:
    """Exactly one of: nothing to stop (fits), stop these (evict, least recently used first), wait for busy ones to
    finish (wait: why), or it cannot fit even with every on-demand workload stopped (refuse: why; nothing stops).
    With evict, `shortage` says why the start did not fit before: the GPU or the memory it needs their room for."""

    evict: tuple[str, ...] = ()
    shortage: str | None = None
    wait: str | None = None
    refuse: str | None = None


def plan_room(residents: Sequence[Resident], fits: Callable[[frozenset[str]], str | None]) -> Room:
    problem = fits(frozenset())
    if problem is None:
        return Room()
    idle = sorted((resident for resident in residents if not resident.in_flight),
                  key=lambda resident: (resident.last_active or _NEVER, resident.name))
    stopped: list[str] = []
    for resident in idle:
        stopped.append(resident.name)
        if fits(frozenset(stopped)) is None:
            return Room(evict=_fewest(stopped, fits), shortage=problem)
    busy = sorted(resident.name for resident in residents if resident.in_flight)
    if busy and fits(frozenset(resident.name for resident in residents)) is None:
        serving = ", ".join(f"Workload/{name}" for name in busy)
        return Room(wait=f"{problem}; it starts when {serving} finishes the requests it serves")
    return Room(refuse=problem)


def _fewest(stopped: list[str], fits: Callable[[frozenset[str]], str | None]) -> tuple[str, ...]:
    """Keep running any of the stopped that the start did not need after all (the most recently used first)."""
    needed = list(stopped)
    for name in reversed(stopped[:-1]):
        if fits(frozenset(needed) - {name}) is None:
            needed.remove(name)
    return tuple(needed)
