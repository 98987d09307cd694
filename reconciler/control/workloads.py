"""Turning a Workload into what would run on this host: model, engine command, GPUs, executable, health.

Observation (files, PATH, NVML, probes) happens here; every decision is made by the pure
functions it calls (preflight, engine_command, assign_gpus, render_launch, note_probe).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from datetime import datetime
from pathlib import Path

from reconciler.api.kinds import KINDS, Model, Runtime, Workload, WorkloadSpec
from reconciler.api.policy import ResourcePolicy
from reconciler.api.launch import BindMount, ContainerLaunch
from reconciler.api.launch import LaunchSpec, render_launch, working_dir_for
from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.rollout import Pins
from reconciler.api.status import Listen
from reconciler.control.holds import last_valid
from reconciler.control.models import ModelStore, ModelView
from reconciler.control.pins import pinned_executable, pinned_image, pinned_model
from reconciler.diff.containers import check_address, container_endpoint, render_container
from reconciler.diff.engines import Blocked, Rendered, engine_check, engine_command, engine_endpoint
from reconciler.diff.gpus import assign_gpus, granted_share
from reconciler.diff.health import note_probe, probe_due
from reconciler.diff.preflight import preflight
from reconciler.diff.resources import memory_commitment
from reconciler.drive.dispatch import Drivers
from reconciler.drive.process import PASSED_THROUGH, child_path
from reconciler.gate.resources import MemoryUse, fits_all_at_once
from reconciler.load.desired import DesiredState
from reconciler.observe import clock
from reconciler.observe.docker_engine import DockerEngine, EngineUnavailable, ImageFacts
from reconciler.observe.gpus import GpuInventory, read_inventory
from reconciler.observe.host import EngineFacts, engine_facts, find_executable
from reconciler.observe.listening import ListenObserver, ObservedListens, listening_table
from reconciler.observe.probes import probe
from reconciler.observe.processes import ProcessObservation, ProcessState


class WorkloadRenderer:
    def __init__(self, root: Path, driver: Drivers, engine: DockerEngine,
                 remembered: Callable[[ResourceKey], ResourceRecord | None], models: ModelStore,
                 routes_file: str) -> None:
        """`routes_file`: where the reconciler publishes the routes an engine gateway reads."""
        self.root = root
        self.routes_file = routes_file
        self.models = models
        self.remembered = remembered
        self.driver = driver
        self.engine = engine
        self.facts = EngineFacts()
        self.inventory = GpuInventory(reason="not observed yet")
        self.memory_total = 0  # the host's RAM, from its profile
        self._engine_problem: str | None = None
        self._engine_checked = False
        self._images: dict[str, ImageFacts] = {}  # present images seen this pass (an absent one is asked again)
        self._listens = ListenObserver()
        self._fits: tuple[DesiredState, bool] | None = None  # fits_all_at_once, for the snapshot it was judged on

    def observe_host(self) -> None:
        """Once per pass: which engines are installed, which GPUs exist; the container engine when first needed."""
        self.facts = engine_facts()
        self.inventory = read_inventory()
        self._engine_checked = False
        self._images = {}

    def render(
        self, desired: DesiredState, remembered: Callable[[ResourceKey], ResourceRecord | None], workload: Workload,
        file: str, process: ProcessObservation, gpu_sharing: bool = False, pins: Pins | None = None,
    ) -> Rendered:
        """`gpu_sharing`: the policy lets shareable workloads share a GPU; otherwise every GPU is exclusive.
        `pins`: a known-good version being restored runs the executable, image and model bytes it was proven with."""
        spec = workload.spec
        container = spec.runtime is Runtime.container
        check = engine_check(spec, self.facts)  # kept even when a start is blocked
        endpoint = container_endpoint(spec) if container else engine_endpoint(spec)

        def blocked(why: Blocked) -> Rendered:
            return Rendered(blocked=why, check=check, endpoint=endpoint)

        current = process.record.launch.gpus if process.record else ()
        request = spec.resources.gpus if gpu_sharing else spec.resources.gpus.model_copy(update={"shareable": False})
        taken, shared = self._gpus_held(workload.name, desired, remembered, gpu_sharing) if request.wanted else ({}, {})
        gpus = assign_gpus(request, self.inventory, taken, current, shared)  # device capability first
        if isinstance(gpus, Blocked):
            return blocked(gpus)
        if container:
            launch = self._render_container(workload, file, gpus, pins)
            return blocked(launch) if isinstance(launch, Blocked) else Rendered(launch, None, check, endpoint)
        model, view = self._model(desired, remembered, spec.model) if spec.model else (None, None)
        if pins is not None:
            view = pinned_model(pins, view, self.models.cache)
        presence = view.presence if view else None
        refused = view.problem if view and view.problem else preflight(spec, model, presence)
        if refused is not None:
            return blocked(refused)
        command = engine_command(spec, str(presence.path) if presence else None, self.facts,
                                 granted_share(request, self.inventory, gpus), self.routes_file)
        if isinstance(command, Blocked):
            return blocked(command)
        default_dir = Path(self.driver.default_working_dir(workload.name))
        working_dir = working_dir_for(spec, (self.root / file).parent, default_dir)
        executable = find_executable(command.command[0], child_path(spec.env), working_dir)
        changed = pinned_executable(pins, executable) if pins is not None else None
        if changed is not None:
            return blocked(changed)
        launch = render_launch(spec, command.command, command.args, working_dir, executable, gpus,
                               presence.identity if presence else None, command.executable_from_spec, command.env)
        return Rendered(launch, None, check, endpoint, presence)

    def listening(self, process: ProcessObservation) -> ObservedListens | None:
        """What a running native workload's processes listen on (a container's are judged by its published ports)."""
        running = process.record
        if process.running_pid is None or running is None or not isinstance(running.launch, LaunchSpec):
            return None
        return self._listens.of(running.pid, self.driver.native.markers(running))

    def listening_version(self) -> tuple[frozenset[tuple[str, str, str]], frozenset[tuple[str, int]]]:
        """Cheap to read, and different whenever what `listening_now` finds may be: the host's listening sockets and
        the native workloads' process records (a start whose socket opened before its record was written)."""
        return listening_table(), self.driver.native.records_version()

    def listening_now(self) -> dict[str, tuple[Listen, ...]]:
        """What each running native workload listens on now: the daemon looks often, and passes one that changed."""
        native = self.driver.native
        processes = {name: native.observe(name) for name in native.owned_names()}
        if any(process.running_pid for process in processes.values()):
            self._listens.read_afresh()  # the passes it triggers reuse this read
        seen = {name: self.listening(process) for name, process in processes.items()}
        return {name: observed.listening for name, observed in seen.items() if observed is not None}

    def probe_if_due(
        self, record: ResourceRecord, rendered: Rendered, workload: Workload, process: ProcessObservation, now: datetime
    ) -> ResourceRecord:
        running, check = process.record, rendered.check
        if check is None or running is None or process.running_pid is None:
            return record
        if not probe_due(check, record.health, running.pid, running.started_at, now):
            return record
        spec = workload.spec
        if isinstance(running.launch, ContainerLaunch):
            address = check_address(check, spec)
            result = (probe(check, *address) if address else
                      self.driver.containers.exec_check(workload.name, check.exec.command, check.timeout_seconds))
        else:
            env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ} | spec.env
            port = (check.http or check.tcp).port if (check.http or check.tcp) else None
            result = probe(check, spec.host, port or spec.port, env, running.launch.working_dir)
        ended = clock.now()  # the next period counts from the end of a slow probe, not its start
        return record.model_copy(update={"health": note_probe(record.health, running.pid, result.ok, result.message, ended)})

    def check_executables(self, rendered: Rendered, workload: Workload) -> tuple[str, ...]:
        """What an exec health check would run, for the gate: as written, as found, as resolved."""
        if rendered.check is None or rendered.check.exec is None or not isinstance(rendered.launch, LaunchSpec):
            return ()  # a container's check runs inside it: nothing on the host is executed
        written = rendered.check.exec.command[0]
        found = find_executable(written, child_path(workload.spec.env), rendered.launch.working_dir)
        # as for the main command: a bare name means nothing to the gate when the spec chooses the PATH
        as_written = () if "PATH" in workload.spec.env and "/" not in written else (written,)
        return (*as_written, found, os.path.realpath(found)) if found else as_written

    def memory_use(self, desired: DesiredState, workload: Workload) -> MemoryUse | None:
        """What starting `workload` would commit, beside what the other running workloads commit; None: nothing."""
        remembered = self.remembered
        wanted, what = self.commitment(desired, workload)
        if not wanted:
            return None
        committed = 0
        for other in self.driver.owned_names():
            key = ResourceKey("Workload", other)
            entry, record = desired.resources.get(key), remembered(key)
            resource = entry.resource if entry else KINDS["Workload"].model_validate(record.resource) if record else None
            if other == workload.name or not isinstance(resource, Workload):
                continue
            if self.driver.observe(other, resource.spec.runtime is Runtime.container).state is ProcessState.running:
                committed += self.commitment(desired, resource)[0]
        return MemoryUse(wanted, what, committed, self.memory_total)

    def memory_always_fits(self, desired: DesiredState, records: list[ResourceRecord], rules: ResourcePolicy) -> bool:
        """Whether every workload of the snapshot and on record (its larger version, when the one on record may run
        instead) could run at once within the memory that may be committed. Judged once per snapshot."""
        if self._fits is not None and self._fits[0] is desired:
            return self._fits[1]
        largest: dict[str, int] = {}
        versions = [entry.resource for entry in desired.resources.values() if isinstance(entry.resource, Workload)]
        versions += [entry.resource for record in records if record.kind == "Workload" and (entry := last_valid(record))]
        for workload in versions:
            assert isinstance(workload, Workload)
            largest[workload.name] = max(largest.get(workload.name, 0), self.commitment(desired, workload)[0])
        fits = fits_all_at_once(largest.values(), self.memory_total, rules)
        self._fits = (desired, fits)
        return fits

    def commitment(self, desired: DesiredState, workload: Workload) -> tuple[int, str]:
        view = self.model_view(desired, workload)
        return memory_commitment(workload.spec, view.presence.size if view and view.presence else None)

    def model_view(self, desired: DesiredState, workload: Workload) -> ModelView | None:
        """The Model a workload serves, as this host sees it: the chosen variant, its footprint and where it is."""
        return self._model(desired, self.remembered, workload.spec.model)[1] if workload.spec.model else None

    def _render_container(self, workload: Workload, file: str, gpus: tuple[int, ...],
                          pins: Pins | None) -> ContainerLaunch | Blocked:
        spec = workload.spec
        assert spec.image is not None
        if not self._engine_checked:
            self._engine_problem, self._engine_checked = self.engine.unavailable(), True
        if self._engine_problem is not None:
            return Blocked("EngineUnavailable", self._engine_problem)
        try:
            image = self._images.get(spec.image) or self.engine.image(spec.image)
            if image is not None:
                self._images[spec.image] = image
            image = pinned_image(pins, image, self.engine) if pins is not None else image
        except EngineUnavailable as unavailable:
            return Blocked("EngineUnavailable", unavailable.message)
        if isinstance(image, Blocked):
            return image
        spec_dir = (self.root / file).parent
        volumes = tuple(BindMount(source=os.path.realpath(spec_dir / volume.source), target=volume.target,
                                  read_only=volume.read_only) for volume in spec.volumes)
        return render_container(spec, image, volumes, gpus)

    def _model(
        self, desired: DesiredState, remembered: Callable[[ResourceKey], ResourceRecord | None], name: str
    ) -> tuple[Model | None, ModelView | None]:
        key = ResourceKey("Model", name)
        entry, record = desired.resources.get(key), remembered(key)
        if entry is not None:
            model, file = entry.resource, entry.file
        elif record is not None:  # held (its new version unusable): the last valid one
            model, file = KINDS["Model"].model_validate(record.resource), record.source
        else:
            return None, None
        assert isinstance(model, Model)
        return model, self.models.view(desired, model, file)

    def _gpus_held(
        self, name: str, desired: DesiredState, remembered: Callable[[ResourceKey], ResourceRecord | None], sharing: bool
    ) -> tuple[dict[int, str], dict[int, tuple[tuple[str, int], ...]]]:
        """GPUs of every other workload's run (running, or ended and waiting out its back-off to start again):
        held exclusively, or shared with the memory each sharer declared."""
        taken: dict[int, str] = {}
        shared: dict[int, tuple[tuple[str, int], ...]] = {}
        for other in self.driver.owned_names():
            observed = self.driver.observe(other) if other != name else None
            if observed is None or observed.record is None:
                continue
            key = ResourceKey("Workload", other)
            record = remembered(key)
            if observed.state is not ProcessState.running and (record is None or record.next_retry_at is None):
                continue  # ended for good: its restart policy will not start it again
            entry = desired.resources.get(key)
            spec = entry.resource.spec if entry else Workload.model_validate(record.resource).spec if record else None
            request = spec.resources.gpus if isinstance(spec, WorkloadSpec) else None
            for gpu in observed.record.launch.gpus:
                if sharing and request is not None and request.shareable and request.min_memory:
                    shared[gpu] = (*shared.get(gpu, ()), (f"Workload/{other}", request.min_memory))
                else:
                    taken[gpu] = f"Workload/{other}"
        return taken, shared
