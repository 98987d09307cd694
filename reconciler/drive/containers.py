"""The container driver: converge containers through the Docker Engine API. It decides nothing.

Ownership and change detection live on the container's labels (container_config.py). A container
without this owner's label is never touched. A replacement is made while the old container stops,
starts once it stopped, and the old one goes after: a crash in between leaves one running container
at most, and a restart's adopt, the next pass's listing (`tidy`) or the next start removes the other.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.api.launch import ContainerLaunch
from reconciler.api.status import ExitInfo
from reconciler.base.atomic import write_atomic
from reconciler.base.crash_points import crash_point
from reconciler.base.sdk_errors import docker_errors
from reconciler.drive.container_config import create_args, launch_of
from reconciler.drive.container_events import ContainerEvents
from reconciler.drive.container_exec import ExecChecks
from reconciler.drive.container_observation import RUNNING, current, observation
from reconciler.drive.container_starts import ContainerStarts
from reconciler.drive.engine_answers import failure_of
from reconciler.drive.logs import LogStore
from reconciler.drive.ports import port_free
from reconciler.drive.protocol import StartFailed
from reconciler.observe.container_listing import OwnedContainers, container_name
from reconciler.observe.docker_engine import DockerEngine, EngineUnavailable
from reconciler.observe.probes import ProbeResult
from reconciler.observe.processes import ProcessObservation, ProcessState

if TYPE_CHECKING:
    from docker.models.containers import Container

LOG_TAIL_LINES = 5000

log = logging.getLogger("reconciler")


class ContainerDriver:
    def __init__(
        self, state_dir: Path, owner: str, engine: DockerEngine, on_exit: Callable[[str], None] | None = None,
        readonly: bool = False, on_engine_back: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        # one listing per pass, inspections reused while no event says otherwise (a read-only one: all its life)
        self._seen = OwnedContainers(engine, owner, one_shot=readonly)
        self.logs = LogStore(state_dir / "logs")
        self._owner = owner
        self._starts = ContainerStarts(state_dir / "containers", readonly)
        self._events = ContainerEvents(engine, owner, self._seen, on_exit, on_engine_back) \
            if on_exit is not None and not readonly else None
        self._readonly = readonly
        self._watching = False
        self._exec_checks = ExecChecks(engine, owner)
        self._acting: dict[str, threading.Lock] = {}  # per workload: a tidy-up never touches a start or stop under way
        self._acting_lock = threading.Lock()

    def container_name(self, name: str) -> str:
        return container_name(self._owner, name)

    def _acting_on(self, name: str) -> threading.Lock:
        with self._acting_lock:
            return self._acting.setdefault(name, threading.Lock())

    # -- observe ----------------------------------------------------------------------------

    def owned_names(self) -> list[str]:
        try:
            return self._seen.names()
        except (EngineUnavailable, docker_errors.APIError):
            return []

    def seen_names(self) -> list[str]:
        """As owned_names, from the pass's listing and what happened since, without a new listing per look."""
        try:
            return self._seen.seen_names()
        except (EngineUnavailable, docker_errors.APIError):
            return []

    def observe(self, name: str) -> ProcessObservation:
        self._watch()
        try:
            return self._observation(name, self._seen.of(name))
        except EngineUnavailable as error:
            return ProcessObservation(ProcessState.unknown, problem=error.message)
        except docker_errors.APIError as error:
            return ProcessObservation(ProcessState.unknown, problem=f"the engine at {self.engine.address}: {error}")

    def adopt(self) -> dict[str, int]:
        """Containers carry their own record (labels): adopting is watching their exits, once there are any (seen by
        the listing a subscribed pass already took, if any), and ending what a crash left of a replacement."""
        if self.seen_names():
            self._watch()
            self.tidy()
        return {}

    def tidy(self) -> None:
        """End what a replacement left, as the latest listing shows it (adopt's, or a pass's): one a crash cut short,
        or one whose old container could not be removed after the new one started."""
        if self._readonly:
            return
        for name in self._seen.untidy():
            acting = self._acting_on(name)
            if acting.acquire(blocking=False):  # else a start or stop of it is under way: it ends with one container
                try:
                    self._keep_one(name)
                finally:
                    acting.release()

    def _keep_one(self, name: str) -> None:
        """A workload with more than one container (a replacement made and never started beside the old one, or
        started with the stopped old one not yet removed), or one not under its name (set aside for a replacement
        that never came), keeps the one observing reports, under the workload's name; the others go as a finished
        replacement's old one does (output kept)."""
        try:
            with self.engine.reach():
                containers = self._seen.of(name)
                adoptable = [(container, launch) for container in containers if (launch := launch_of(container))]
                if not adoptable:
                    return  # none is adoptable: the start that follows replaces them all
                kept = current(adoptable)[0]
                left = [container for container in containers if container.id != kept.id]
                if not left and kept.name == self.container_name(name):
                    return  # tidied since the listing (its start ended)
                if left:
                    self._retire(name, left, 10.0)
                if kept.name != self.container_name(name):
                    kept.rename(self.container_name(name))
            log.warning("%s: what a replacement left (cut short by a crash, or its old container's removal failed): "
                        "%d other container(s) removed; %s kept under the workload's name", name, len(left), kept.id[:12])
        except (EngineUnavailable, docker_errors.APIError) as error:
            log.warning("%s: what a replacement left stays until a later pass: %s", name, error)
        finally:
            self._seen.changed(name)

    def _watch(self) -> None:
        """Listen to the engine's events from the first container workload on (a host without one never asks)."""
        if self._events is not None and not self._watching:
            self._watching = True
            self._events.start()

    def default_working_dir(self, name: str) -> str:
        return "/"

    def log_path(self, name: str) -> str:
        return str(self.logs.path(name))

    def trim_log(self, name: str) -> None:
        """Copy an ended container's output into the bounded log store, where it outlives the container (a running
        one's is read live from the engine by `reconciler logs`, and copied when it is stopped or replaced)."""
        try:
            for container in self._seen.of(name):
                if container.status not in RUNNING:
                    self._save_log(name, container)
        except (EngineUnavailable, docker_errors.APIError):
            return

    def exec_check(self, name: str, command: list[str], timeout: float) -> ProbeResult:
        """Run an exec health check inside the workload's running container; one at a time, killed at `timeout`."""
        return self._exec_checks.run(name, command, timeout)

    # -- act --------------------------------------------------------------------------------

    def start(self, name: str, launch: ContainerLaunch, generation: int,  # type: ignore[override]
              grace_seconds: float = 10.0, stopped: Callable[[], None] = lambda: None) -> ProcessObservation:
        """Start `launch` in place of whatever container the workload has: the replacement is made while the old one
        stops (TERM, `grace_seconds`, KILL), starts once it stopped, and the old one is removed after. `stopped` is
        called once the old ones have stopped (a stop that fails raises before it)."""
        told: list[bool] = []

        def stopped_once() -> None:  # a fallback's stop, then a failed create, still told once
            if not told:
                told.append(True)
                stopped()

        try:
            with self._acting_on(name):
                return self._start(name, launch, generation, grace_seconds, stopped_once)
        except BaseException:
            self._seen.changed(name)
            raise

    def _start(self, name: str, launch: ContainerLaunch, generation: int, grace_seconds: float,
               stopped: Callable[[], None]) -> ProcessObservation:
        from concurrent.futures import ThreadPoolExecutor  # where a container is started, not by every command

        try:
            with self.engine.reach() as client, ThreadPoolExecutor(1, "container-stop") as stopper:
                olds, stopping = self._seen.of(name), None
                try:
                    self._check_host(launch, [old for old in olds if old.status in RUNNING])
                    olds, aside = self._set_aside(name, olds, grace_seconds, stopped)
                    self._starts.remember(name, None)  # before the engine makes anything, as a native start's intent

                    def stop_olds() -> None:  # told in the stopper: whatever fails after, the stop that happened is said
                        self._stop_all(olds, grace_seconds)
                        stopped()

                    # the old ones stop while their replacement is made (its create is off the time nothing serves)
                    stopping = stopper.submit(stop_olds)
                    container = client.containers.create(**create_args(name, self.container_name(name), self._owner, launch, generation))
                except _OldRunsOn:
                    raise
                except (StartFailed, docker_errors.APIError):  # it fails as it did after the old one went: nothing runs
                    if stopping is None or stopping.exception() is not None:
                        self._stop_all(olds, grace_seconds)
                        stopped()
                    self._retire(name, olds, grace_seconds, stopped=True)
                    self._starts.forget(name)
                    raise
                # what the start leaves is inspected at its end, and that inspection serves the looks that follow
                # (the pass's status, the other workloads' memory): the events of this start are not news then
                mark = self._seen.expect(container.id, "create", "start", name=name)
                try:
                    stopping.result()
                except Exception as error:
                    with contextlib.suppress(Exception):  # noqa: BLE001 - else the next start or a pass's tidy-up does
                        self._discard(name, container)  # the old one may run on: the new one never starts beside it
                        if aside is not None:
                            aside.rename(self.container_name(name))
                    if isinstance(error, docker_errors.APIError):
                        raise _OldRunsOn("ContainerStopFailed", f"{self.container_name(name)}: "
                                                                f"{error.explanation or error}") from None
                    raise
                crash_point("replaced-stopped")
                try:
                    container.start()
                except docker_errors.APIError as error:
                    self._retire(name, olds, grace_seconds, stopped=True)
                    self._save_log(name, container)
                    self._discard(name, container)
                    raise failure_of(error, "ContainerStartFailed") from None
                try:  # started: nothing after this makes it a failed start
                    with self.engine.reach():
                        container.reload()
                        self._starts.remember(name, container)
                        crash_point("replacement-started")
                        self._retire(name, olds, grace_seconds, stopped=True)
                except (EngineUnavailable, docker_errors.APIError) as error:
                    log.warning("%s: %s started; the replaced container(s) stay until a later pass removes them: %s",
                                name, container.id[:12], error)
                    self._seen.changed(name)
                    return self.observe(name)
        except EngineUnavailable as error:
            raise StartFailed("EngineUnavailable", error.message) from None
        except docker_errors.APIError as error:
            raise failure_of(error, "ContainerCreateFailed") from None
        self._seen.acted(name, [container], mark)
        return self._observation(name, [container])

    def pull(self, launch: ContainerLaunch) -> ContainerLaunch:
        """Fetch the launch's image; returns the launch naming the image now here (its ID, its USER)."""
        if not launch.pull:
            return launch
        try:
            with self.engine.reach() as client:
                try:  # streamed, with no read timeout: a big image takes long; an error arrives inside the stream
                    for progress in client.api.pull(launch.image, stream=True, decode=True):
                        if "error" in progress:
                            raise StartFailed("ImagePullFailed", f"pulling {launch.image}: {progress['error']}")
                except docker_errors.APIError as error:
                    raise StartFailed("ImagePullFailed", f"pulling {launch.image}: {error.explanation or error}") from None
            image = self.engine.image(launch.image)
        except EngineUnavailable as error:
            raise StartFailed("EngineUnavailable", error.message) from None
        except docker_errors.APIError as error:
            raise failure_of(error, "ImagePullFailed") from None
        if image is None:
            raise StartFailed("ImagePullFailed", f"pulling {launch.image} finished but the engine does not have it")
        return launch.model_copy(update={"image_id": image.id, "image_user": image.user})

    def stop(self, name: str, grace_seconds: float, forget: bool = True) -> ExitInfo | None:
        """Stop the workload's container (TERM, grace, KILL); `forget` removes it, else it stays as exited.
        Raises EngineUnavailable, or StartFailed when the engine refuses: the caller tries again later."""
        try:
            with self._acting_on(name):
                return self._stop(name, grace_seconds, forget)
        except BaseException:
            self._seen.changed(name)
            raise

    def _stop(self, name: str, grace_seconds: float, forget: bool) -> ExitInfo | None:
        observed = None
        if not self._starts.last(name) and self.engine.unavailable() is not None:
            self._seen.changed(name)
            return None  # an intent precedes every create: without one, there is no container of ours to stop
        mark = self._seen.mark(name)
        with self.engine.reach():
            for container in self._seen.of(name):  # as this pass saw them, or afresh if anything happened since
                # the exit this stop causes is no news to wake the workload with: the pass that stops it looks after
                with self._seen.expecting(container.id, "die", *(("destroy",) if forget else ())):
                    try:
                        if container.status in RUNNING:
                            if not forget:  # its exit stays on record, to be told from a crash
                                self._starts.note_stop_requested(name, container.id)
                            try:
                                container.stop(timeout=math.ceil(grace_seconds))
                            except Exception:
                                if not forget:  # it may run on: a later exit of its own is no stop of ours
                                    self._starts.note_stop_requested(name, container.id, withdrawn=True)
                                raise
                        container.reload()
                        observed = self._observation(name, [container])
                        self._save_log(name, container)
                        if forget:
                            container.remove(force=True)
                    except docker_errors.NotFound:
                        continue  # removed meanwhile: what was wanted
                    except docker_errors.APIError as error:
                        raise StartFailed("ContainerStopFailed",
                                          f"{container.name}: {error.explanation or error}") from None
        if forget:
            self._starts.forget(name)
            self._seen.acted(name, [], mark)  # all removed: the start that may follow need not look again
        else:
            self._seen.changed(name)
        return observed.exit if observed else None

    # -- internals --------------------------------------------------------------------------

    def _observation(self, name: str, containers: list[Container]) -> ProcessObservation:
        return observation(name, containers, self._starts, self._readonly)

    def _check_host(self, launch: ContainerLaunch, replaced: list[Container]) -> None:
        """Raise StartFailed unless the launch's host ports (but those the `replaced` containers publish on any
        address, freed by their stop; the engine's start judges those) are free and its volume sources exist."""
        held = {binding.get("HostPort", "") for container in replaced
                for spec, bindings in ((container.attrs.get("HostConfig") or {}).get("PortBindings") or {}).items()
                if spec.endswith("/tcp") for binding in bindings or []}
        for port in launch.ports:
            if port.protocol == "tcp" and str(port.host_port) not in held and not port_free(port.host_ip, port.host_port):
                raise StartFailed("PortInUse", f"{port.host_ip}:{port.host_port} is already in use on this host: "
                                               "publish another hostPort, or stop what listens there")
        for volume in launch.volumes:
            if not Path(volume.source).exists():
                raise StartFailed("VolumeSourceNotFound", f"volume source {volume.source} does not exist: create it "
                                                          "or fix spec.volumes")

    def _set_aside(self, name: str, olds: list[Container], grace_seconds: float,
                   stopped: Callable[[], None]) -> tuple[list[Container], Container | None]:
        """The workload's name goes to its replacement: an old container holding it is renamed after its own id
        (returned second). If the engine refuses (that name taken by a container not ours), the old ones go first,
        as before the replacement was made beside them: stopped, their output kept, removed; none are left."""
        canonical = self.container_name(name)
        holder = next((old for old in olds if old.name == canonical), None)
        if holder is None:
            return olds, None
        try:
            holder.rename(f"{canonical}-{holder.id[:12]}")
        except docker_errors.APIError as refused:
            log.warning("%s: %s cannot be set aside (%s): it stops before its replacement is made", name,
                        holder.id[:12], refused.explanation or refused)
            try:
                self._stop_all(olds, grace_seconds)
            except docker_errors.APIError as error:
                raise _OldRunsOn("ContainerStopFailed", f"{canonical}: {error.explanation or error}") from None
            stopped()
            self._retire(name, olds, grace_seconds, stopped=True)
            return [], None
        return olds, holder

    def _stop_all(self, containers: list[Container], grace_seconds: float) -> None:
        """Stop every running one; the exits are our own (taken back if the stop fails: it may run on)."""
        for container in containers:
            if container.status in RUNNING:  # one whose labels we cannot read: still stopped gracefully
                with self._seen.expecting(container.id, "die"):
                    try:
                        container.stop(timeout=math.ceil(grace_seconds))
                    except docker_errors.NotFound:
                        pass

    def _retire(self, name: str, olds: list[Container], grace_seconds: float, stopped: bool = False) -> None:
        """Stop the replaced containers (unless `stopped` already), keep the output of those that ran (as the
        previous run's: the replacement's own log starts afresh) and remove them."""
        if not stopped:
            self._stop_all(olds, grace_seconds)
        ran = [old for old in olds if old.status != "created"]  # one that never started has no output to keep
        for old in ran:
            self._save_log(name, old)
        self.logs.rotate(name)
        for old in olds:
            with self._seen.expecting(old.id, "destroy"):
                try:
                    old.remove(force=True)
                except docker_errors.NotFound:
                    pass

    def _discard(self, name: str, container: Container) -> None:
        """Remove a replacement that never started: nothing half-made is left behind."""
        with self._seen.expecting(container.id, "destroy"):
            container.remove(force=True)
        self._starts.forget(name)

    def _save_log(self, name: str, container: Container) -> None:
        if self._readonly:
            return
        try:
            with self.engine.reach():  # an engine going away between the list and this read is no crash of the pass
                output = container.logs(stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        except (EngineUnavailable, docker_errors.APIError):
            return
        self.logs.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.logs.path(name), output[-self.logs.max_bytes:], mode=0o600)


class _OldRunsOn(StartFailed):
    """The old container's stop failed: it runs on, and the replacement was not started."""
