"""What the engine's containers of a workload say on the reconciler's terms: which is the workload's, and its run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.api.status import ExitInfo
from reconciler.drive.container_config import GENERATION_LABEL, enforcement, launch_of
from reconciler.drive.engine_answers import addresses_of, engine_time, system_time
from reconciler.observe import clock
from reconciler.observe.processes import ProcessObservation, ProcessRecord, ProcessState

if TYPE_CHECKING:
    from docker.models.containers import Container

    from reconciler.api.launch import ContainerLaunch
    from reconciler.drive.container_starts import ContainerStarts

RUNNING = {"running", "paused", "restarting"}


def observation(name: str, containers: list[Container], starts: ContainerStarts, readonly: bool) -> ProcessObservation:
    """What a workload's containers say: the current one's run (absent if none is adoptable or it never started).
    Unless `readonly`, a running one's pid not yet on record is remembered."""
    adoptable = [(container, launch) for container in containers if (launch := launch_of(container))]
    if not adoptable:  # a start replaces whatever carries our label
        started = starts.last(name).get("id")
        gone = started and not any(container.id == started for container in containers)
        return ProcessObservation(ProcessState.absent, vanished=f"container {started[:12]}" if gone else None)
    container, launch = current(adoptable)
    state = container.attrs.get("State") or {}
    if state.get("Status") == "created":
        return ProcessObservation(ProcessState.absent)  # a start a crash cut short
    pid = state.get("Pid") or starts.pid(name, container.id)
    # Docker's zero time (never started, or ended with no finish recorded, as a start cut by an engine restart
    # leaves it) falls back to the time before it, never to "now": an exit seen anew on every pass would
    # push its restart's back-off out forever.
    created = engine_time(container.attrs.get("Created"), clock.now())
    started_at = engine_time(state.get("StartedAt"), created)
    record = ProcessRecord(
        name=name, pid=pid, start_ticks=0, nonce=container.id[:16], launch=launch,
        generation=int(container.labels.get(GENERATION_LABEL, "1")), started_at=started_at,
        enforcement=enforcement(launch), container_id=container.id, addresses=addresses_of(container),
    )
    if state.get("Status") in RUNNING:
        if not readonly and starts.pid(name, container.id) != pid:
            starts.remember(name, container)
        return ProcessObservation(ProcessState.running, record)
    # The engine's own words tell this exit from another, and its own clock how long the run took: moved onto
    # the reconciler's clock as they are read, they would change whenever the system clock is slewed or stepped.
    began, ended = state.get("StartedAt"), state.get("FinishedAt")
    start_time, finish_time = system_time(began), system_time(ended)
    ran = (finish_time - start_time).total_seconds() if start_time and finish_time else 0.0
    exit_info = ExitInfo(pid=pid, code=state.get("ExitCode"), finished_at=engine_time(ended, started_at),
                         run=f"container {container.id} started {began} finished {ended}",
                         ran_seconds=max(0.0, ran), oom_killed=bool(state.get("OOMKilled")),
                         stopped_by_reconciler=starts.stopped_by_us(name, container.id, finish_time))
    return ProcessObservation(ProcessState.exited, record.model_copy(update={"exit": exit_info}))


def current(adoptable: list[tuple[Container, ContainerLaunch]]) -> tuple[Container, ContainerLaunch]:
    """The workload's container (with its launch) among those with intact labels: a running one before one that
    never started beside it (a replacement a crash cut short), else the newest."""
    return max(adoptable, key=lambda pair: (pair[0].status in RUNNING, pair[0].attrs.get("Created", "")))
