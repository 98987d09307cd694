"""Health bookkeeping and the decisions it leads to. Pure: probes are run by the observe stage."""

from __future__ import annotations

from datetime import datetime, timedelta

from reconciler.api.status import HealthState
from reconciler.api.checks import HealthCheck


STARTUP_PERIOD_SECONDS = 1.0  # until the first success: a server that is up should not wait a whole period
NOT_READY = "NotReady"  # Ready's reason while it lives but its readiness check fails: not a failure of its own


def probe_due(check: HealthCheck, state: HealthState | None, pid: int, started_at: datetime, now: datetime) -> bool:
    if now < started_at + timedelta(seconds=check.initial_delay_seconds):
        return False
    if state is None or state.pid != pid or state.last_probe_at is None:
        return True
    return now >= state.last_probe_at + timedelta(seconds=_period(check, state))


def next_probe_in(check: HealthCheck, state: HealthState | None, pid: int, started_at: datetime, now: datetime) -> float:
    due = started_at + timedelta(seconds=check.initial_delay_seconds)
    if state is not None and state.pid == pid and state.last_probe_at is not None:  # else: a new process
        due = max(due, state.last_probe_at + timedelta(seconds=_period(check, state)))
    return max(0.0, (due - now).total_seconds())


def next_probes_in(probes: list[tuple[HealthCheck, HealthState | None]], pid: int, started_at: datetime,
                   now: datetime) -> float | None:
    """Seconds until the soonest of these checks is due (None: no check)."""
    return min((next_probe_in(check, state, pid, started_at, now) for check, state in probes), default=None)


def _period(check: HealthCheck, state: HealthState) -> float:
    return check.period_seconds if state.ever_ready else min(check.period_seconds, STARTUP_PERIOD_SECONDS)


def note_probe(state: HealthState | None, pid: int, ok: bool, message: str, now: datetime) -> HealthState:
    if state is None or state.pid != pid:
        state = HealthState(pid=pid)
    if ok:
        return state.model_copy(update={"ready": True, "ever_ready": True, "consecutive_failures": 0,
                                        "last_probe_at": now, "message": message})
    return state.model_copy(update={"ready": False, "consecutive_failures": state.consecutive_failures + 1,
                                    "last_probe_at": now, "message": message})


def unhealthy_cause(
    check: HealthCheck, state: HealthState | None, pid: int, started_at: datetime, now: datetime
) -> tuple[str, str] | None:
    """(reason, message) why the process must be stopped and restarted per its restart policy, if it must."""
    if state is None or state.pid != pid:
        state = HealthState(pid=pid)
    if state.ever_ready and state.consecutive_failures >= check.failure_threshold:
        return "Unhealthy", f"unhealthy: {state.consecutive_failures} checks failed in a row ({state.message})"
    if not state.ever_ready and now >= started_at + timedelta(seconds=check.startup_seconds):
        return "StartupTimeout", f"not healthy within its startup budget of {check.startup_seconds:g}s ({state.message})"
    return None
