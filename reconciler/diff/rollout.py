"""Is the generation being rolled out proven, still on its way, or failed? Pure: the caller reads the clock.

A generation is proven when it became Ready within the progress deadline and then stayed Ready for the whole
soak period (judged by health, not by the process merely existing: podman's auto-update misses that). Losing
Ready while soaking, or never reaching it in time, fails it; a failure is final for that generation.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.api.rollout import Instant, KnownGood, RolledBack, RolloutClock
from reconciler.api.status import RolloutState
from reconciler.api.lifecycle import UpdateStrategy

PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
UNHEALTHY_WHILE_SOAKING = "UnhealthyWhileSoaking"
ROLLED_BACK = "RolledBack"  # the hold's reason and the phase while the known-good version stands in


@dataclass(frozen=True)
class Observed:
    """This pass's view of the generation in force."""

    generation: int
    spec_hash: str
    ready: bool
    message: str  # the Ready condition's message: the health output or why it is not running


@dataclass(frozen=True)
class Assessment:
    state: RolloutState
    message: str
    clock: RolloutClock | None  # what to remember (None: nothing is being proven)
    failed_reason: str | None = None  # set only on the pass that failed it
    proven: bool = False  # set only on the pass that proved it
    look_again: float | None = None  # seconds until the deadline or the end of the soak


def assess(clock: RolloutClock | None, known_good: KnownGood | None, observed: Observed, update: UpdateStrategy,
           now: Instant) -> Assessment:
    if known_good is not None and known_good.spec_hash == observed.spec_hash:
        return Assessment(RolloutState.proven, f"generation {known_good.generation} is the known-good version", None)
    if clock is None or clock.spec_hash != observed.spec_hash:
        clock = RolloutClock(generation=observed.generation, spec_hash=observed.spec_hash, started=now)
    elif clock.started.boot_id != now.boot_id and clock.failure is None:
        # a reboot: the monotonic clock restarted, so the deadline is counted from now (a failure stays one)
        clock = RolloutClock(generation=observed.generation, spec_hash=observed.spec_hash, started=now)
    if clock.failure is not None:
        return Assessment(RolloutState.failed, clock.failure, clock)
    if observed.ready:
        since = clock.ready_since if clock.ready_since is not None else now
        soaked = now.monotonic - since.monotonic
        if soaked >= update.soak_seconds:
            return Assessment(RolloutState.proven, f"Ready and healthy for {update.soak_seconds:g}s: the known-good "
                              "version now", None, proven=True)
        # no count of seconds in a message: each would rewrite the status file on every pass (Ready's condition
        # says since when it is Ready)
        return Assessment(RolloutState.soaking, f"Ready; proven once Ready for {update.soak_seconds:g}s in a row",
                          clock.model_copy(update={"ready_since": since}), look_again=update.soak_seconds - soaked)
    if clock.ready_since is not None:
        return _failed(clock, UNHEALTHY_WHILE_SOAKING, f"lost Ready while soaking: {observed.message}")
    waited = now.monotonic - clock.started.monotonic
    if waited >= update.progress_deadline_seconds:
        return _failed(clock, PROGRESS_DEADLINE_EXCEEDED,
                       f"not Ready within {update.progress_deadline_seconds:g}s: {observed.message}")
    return Assessment(RolloutState.progressing, f"waiting for Ready (at most {update.progress_deadline_seconds:g}s): "
                      f"{observed.message}", clock, look_again=update.progress_deadline_seconds - waited)


def _failed(clock: RolloutClock, reason: str, message: str) -> Assessment:
    return Assessment(RolloutState.failed, message, clock.model_copy(update={"failure": f"{reason}: {message}"}),
                      failed_reason=reason)



def standing(clock: RolloutClock | None, known_good: KnownGood | None, rolled_back: RolledBack | None,
             spec_hash: str) -> tuple[int, RolloutState, str] | None:
    """Where the rollout of `spec_hash` stood when it was last judged, from what is on record alone (no clock is
    read): what a read-only `status` shows. The generation, its state, and why."""
    if rolled_back is not None and known_good is not None and rolled_back.spec_hash == spec_hash:
        return rolled_back.generation, RolloutState.rolled_back, (
            f"generation {rolled_back.generation} was rolled back by {rolled_back.by}: {rolled_back.message}")
    if known_good is not None and known_good.spec_hash == spec_hash:
        return known_good.generation, RolloutState.proven, f"generation {known_good.generation} is the known-good version"
    if clock is None or clock.spec_hash != spec_hash:
        return None
    if clock.failure is not None:
        return clock.generation, RolloutState.failed, clock.failure
    if clock.ready_since is not None:
        return clock.generation, RolloutState.soaking, "Ready; its soak period is running"
    return clock.generation, RolloutState.progressing, "not Ready yet; its progress deadline is running"
