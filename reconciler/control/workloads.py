"""Turning a Workload into what would run on this host: model, engine command, GPUs, executable, health.

Observation (files, PATH, NVML, probes) happens here; every decision is made by the pure
functions it calls (preflight, engine_command, assign_gpus, render_launch, note_probe).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from datetime import datetime
from pathlib import Path

from reconciler.api.kinds import KINDS, Engine, Model, Runtime, Workload, WorkloadSpec
from reconciler.api.checks import HealthCheck
from reconciler.api.policy import ResourcePolicy
from reconciler.api.launch import BindMount, ContainerLaunch
from reconciler.api.launch import LaunchSpec, render_launch, working_dir_for
from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.rollout import Pins
from reconciler.api.status import Listen, ResourceStatus
from reconciler.control.holds import last_valid
from reconciler.control.models import ModelStore, ModelView
from reconciler.control.pins import pinned_executable, pinned_image, pinned_model
from reconciler.diff.containers import check_address, container_endpoint, render_container
from reconciler.diff.engines import Blocked, EngineCommand, Rendered, engine_check, engine_command, engine_endpoint
from reconciler.diff.footprint import estimate
from reconciler.diff.gpus import assign_gpus, granted_share
from reconciler.diff.health import note_probe, probe_due
from reconciler.diff.preflight import preflight
from reconciler.diff.resources import memory_commitment
from reconciler.diff.uses import container_users, use_cycle, use_endpoints, waiting_for
from reconciler.drive.dispatch import Drivers
from reconciler.drive.process import PASSED_THROUGH, child_path
from reconciler.diff.acceleration import Acceleration, AssignedGpu, assess_acceleration
from reconciler.gate.acceleration import acceleration_asked, acceleration_refusal, gpu_layers_asked
from reconciler.gate.resources import MemoryUse, fits_all_at_once
from reconciler.gateway.spool import gateway_folders
from reconciler.load.desired import DesiredState
from reconciler.observe import clock
from reconciler.observe.docker_engine import DockerEngine, EngineUnavailable, ImageFacts
from reconciler.observe.engine_builds import LLAMA_CPP_PYTHON, LLAMA_SERVER, EngineBuild, EngineBuilds
from reconciler.observe.engine_log import EngineLoad, read_engine_load
from reconciler.observe.gguf_facts import GgufUnreadable
from reconciler.observe.gpu_processes import process_tree, read_gpu_processes
from reconciler.observe.gpus import GpuInventory, read_inventory
from reconciler.observe.host import EngineFacts, engine_facts, find_executable
from reconciler.observe.listening import ListenObserver, ObservedListens, listening_table
from reconciler.observe.probes import ProbeResult, probe
from reconciler.observe.processes import ProcessObservation, ProcessRecord, ProcessState

_RecordsVersion = frozenset[tuple[str, int, int, int]]  # each process record's name, mtime, inode and size


class WorkloadRenderer:
    def __init__(self, root: Path, driver: Drivers, engine: DockerEngine,
                 remembered: Callable[[ResourceKey], ResourceRecord | None], models: ModelStore,
                 routes_file: str, builds: EngineBuilds) -> None:
        """`routes_file`: where the reconciler publishes the routes an engine gateway reads; `builds`: what the
        host's llama.cpp builds can do, asked once per build."""
        self.root = root
        self.builds = builds
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
        self._listens = ListenObserver(lambda: self._listening_users()[1])
        self._listeners: tuple[_RecordsVersion, frozenset[int] | None] | None = None  # records -> users
        self._loads: dict[str, tuple[int, EngineLoad, int | None]] = {}  # workload -> (pid, finished load, estimate)
        self._bridge: str | None | bool = False  # the host's address on the container bridge, read once a pass
        # the statuses of the named workloads, as the status files show them
        self.statuses: Callable[[list[str]], dict[str, ResourceStatus | None]] = lambda names: {}
        self._fits: tuple[DesiredState, bool] | None = None  # fits_all_at_once, for the snapshot it was judged on

    def observe_host(self) -> None:
        """Once per pass: which engines are installed, which GPUs exist; the container engine when first needed."""
        self.facts = engine_facts()
        self.inventory = read_inventory()
        self._engine_checked = False
        self._images = {}
        self._bridge = False

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
        accelerated = None if container else self._acceleration(desired, workload, process)

        def blocked(why: Blocked) -> Rendered:
            return Rendered(blocked=why, check=check, endpoint=endpoint, acceleration=accelerated,
                            readiness=spec.readiness)

        current = process.record.launch.gpus if process.record else ()
        request = spec.resources.gpus if gpu_sharing else spec.resources.gpus.model_copy(update={"shareable": False})
        taken, shared = self.gpus_held(workload.name, desired, remembered, gpu_sharing) if request.wanted else ({}, {})
        gpus = assign_gpus(request, self.inventory, taken, current, shared)  # device capability first
        if isinstance(gpus, Blocked):
            return blocked(gpus)
        uses_env = self._uses(desired, workload, process)
        if isinstance(uses_env, Blocked):
            return blocked(uses_env)
        if container:
            launch = self._render_container(workload, file, gpus, pins, uses_env)
            return blocked(launch) if isinstance(launch, Blocked) else Rendered(launch, None, check, endpoint,
                                                                                   readiness=spec.readiness)
        model, view = self._model(desired, remembered, spec.model) if spec.model else (None, None)
        if pins is not None:
            view = pinned_model(pins, view, self.models.cache)
        presence = view.presence if view else None
        refused = view.problem if view and view.problem else preflight(spec, model, presence)
        if refused is not None:
            return blocked(refused)
        bridge = self._bridge_for(workload.name, desired, process) if spec.engine is Engine.gateway else None
        command = engine_command(spec, str(presence.path) if presence else None, self.facts,
                                 granted_share(request, self.inventory, gpus), self.routes_file, bridge)
        if isinstance(command, Blocked):
            return blocked(command)
        refusal = acceleration_refusal(spec, gpus, self._build(spec, gpus, command))
        if refusal is not None:  # never started on the CPU in its place
            return blocked(refusal)
        default_dir = Path(self.driver.default_working_dir(workload.name))
        working_dir = working_dir_for(spec, (self.root / file).parent, default_dir)
        executable = find_executable(command.command[0], child_path(spec.env), working_dir)
        changed = pinned_executable(pins, executable) if pins is not None else None
        if changed is not None:
            return blocked(changed)
        launch = render_launch(spec, command.command, command.args, working_dir, executable, gpus,
                               presence.identity if presence else None, command.executable_from_spec,
                               (*uses_env.items(), *command.env), bridge, self._own_folders(spec))
        return Rendered(launch, None, check, endpoint, presence, accelerated, spec.readiness)

    def _own_folders(self, spec: WorkloadSpec) -> tuple[str, ...]:
        if spec.engine is not Engine.gateway:
            return ()
        return tuple(map(str, gateway_folders(Path(self.routes_file).parent.parent)))

    def _acceleration(self, desired: DesiredState, workload: Workload, process: ProcessObservation) -> Acceleration | None:
        """Where a running engine that asked for a GPU put its model: its log's word, checked against NVML's list
        of the processes holding GPU memory."""
        running = process.record
        if process.running_pid is None or running is None or not isinstance(running.launch, LaunchSpec):
            return None
        spec = workload.spec
        asked = acceleration_asked(spec, running.launch.gpus)
        if asked is None:
            return None
        pid, load, footprint = self._loads.get(workload.name, (None, None, None))
        if pid != running.pid or load is None:  # a finished load is read once per run; one still loading each pass
            load, footprint = read_engine_load(self.driver.log_path(workload.name)), self._gpu_estimate(desired, workload)
            if load.loaded:
                self._loads[workload.name] = (running.pid, load, footprint)
        uuids = {gpu.index: gpu.uuid for gpu in self.inventory.gpus}
        assigned = [AssignedGpu(index, uuids.get(index, f"GPU {index}")) for index in running.launch.gpus]
        return assess_acceleration(asked, assigned, load, read_gpu_processes().held_by(process_tree(running.pid)),
                                   gpu_layers_asked(spec), footprint)

    def _gpu_estimate(self, desired: DesiredState, workload: Workload) -> int | None:
        """The footprint estimated for the model on a GPU: the chosen variant's, else one from its GGUF header."""
        view = self.model_view(desired, workload)
        if view is not None and view.selection is not None and view.selection.estimate is not None:
            return view.selection.estimate.total
        presence = view.presence if view is not None else None
        if presence is None or not presence.present or presence.magic != b"GGUF":
            return None
        from reconciler.observe.gguf_header import read_gguf_facts  # gguf loads numpy: 0.1 s of every command

        try:
            facts = read_gguf_facts(presence.path)
        except GgufUnreadable:
            return None
        options = workload.spec.llama_cpp
        footprint = estimate(presence.size, facts, options.context_size if options else None, device="GPU")
        return footprint.total if footprint else None

    def _build(self, spec: WorkloadSpec, gpus: tuple[int, ...], command: EngineCommand) -> EngineBuild | None:
        """The host's llama.cpp build this start would run, asked what it can do when the workload wants a GPU."""
        if spec.engine is not Engine.llama_cpp or command.executable_from_spec or acceleration_asked(spec, gpus) is None:
            return None
        kind = LLAMA_SERVER if command.command[0] == self.facts.llama_server else LLAMA_CPP_PYTHON
        return self.builds.of(kind, command.command[0], self.inventory)

    def _uses(self, desired: DesiredState, workload: Workload, process: ProcessObservation) -> dict[str, str] | Blocked:
        """The endpoints its uses give it; a start waits until every used workload is Ready (one that runs keeps
        running when they are not: its readiness, not its life, depends on them)."""
        spec = workload.spec
        if not spec.uses:
            return {}
        workloads = _workloads(desired)
        used = {use.workload: workloads[use.workload] for use in spec.uses if use.workload in workloads}
        endpoints = use_cycle(workload.name, workloads) or use_endpoints(spec, used)
        if isinstance(endpoints, Blocked):
            return endpoints
        running = process.running_pid is not None
        statuses = dict.fromkeys(used) if running else self.statuses(sorted(used))
        return waiting_for(spec, statuses, running) or endpoints

    def _bridge_for(self, gateway: str, desired: DesiredState, process: ProcessObservation) -> str | None:
        """Where a gateway also listens: the host's address on the bridge, once a container declares it uses it.
        While the engine does not answer, a running gateway keeps the address it has: an engine restart must not
        restart the gateway (and cut its streams)."""
        if not container_users(gateway, _workloads(desired)):
            return None
        if self._bridge is False:
            self._bridge = self.engine.bridge_address()
        running = process.record.launch if process.record and process.running_pid else None
        kept = running.container_listen if isinstance(running, LaunchSpec) else None
        return self._bridge or kept

    def listening(self, process: ProcessObservation) -> ObservedListens | None:
        """What a running native workload's processes listen on (a container's are judged by its published ports)."""
        running = process.record
        if process.running_pid is None or running is None or not isinstance(running.launch, LaunchSpec):
            return None
        # a dynamic user is this workload's alone; a named user or root may be shared, so only processes map to it
        own_user = running.run_as.uid if running.run_as is not None and running.run_as.dynamic else None
        return self._listens.of(running.pid, self.driver.native.markers(running), own_user)

    def listening_version(self) -> tuple[frozenset[tuple[str, str, int]], _RecordsVersion]:
        """Cheap to read, and different whenever what `listening_now` finds may be: the listening sockets of the users
        the native workloads run as, and their process records (a start whose socket opened before its record was
        written)."""
        records, users = self._listening_users()
        # another user's sockets changing (a busy desktop's, every few seconds) is no reason to map them all
        return listening_table(users), records

    def _listening_users(self) -> tuple[_RecordsVersion, frozenset[int] | None]:
        """The native workloads' process records, and the users whose processes may be theirs (None: anyone's)."""
        native = self.driver.native
        records, known = native.records_version(), self._listeners
        if known is None or known[0] != records:  # who may listen changes only with a record
            known = self._listeners = (records, native.listening_users())
        return known

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
        """Run the health check and the readiness check that are due; their results go on the record."""
        running = process.record
        if running is None or process.running_pid is None:
            return record
        update = {}
        for field, check in (("health", rendered.check), ("readiness", rendered.readiness)):
            state = getattr(record, field)
            if check is not None and probe_due(check, state, running.pid, running.started_at, now):
                result = self._probe(check, workload, running)
                ended = clock.now()  # the next period counts from the end of a slow probe, not its start
                update[field] = note_probe(state, running.pid, result.ok, result.message, ended)
        return record.model_copy(update=update) if update else record

    def _probe(self, check: HealthCheck, workload: Workload, running: ProcessRecord) -> ProbeResult:
        spec = workload.spec
        if isinstance(running.launch, ContainerLaunch):
            address = check_address(check, spec)
            return (probe(check, *address) if address else
                    self.driver.containers.exec_check(workload.name, check.exec.command, check.timeout_seconds))
        user_env, as_workload = self.driver.native.as_workload(running)
        # what the process was given (spec.env, and the addresses `uses` injects), not what the spec says now
        env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ} | user_env | running.launch.env
        port = (check.http or check.tcp).port if (check.http or check.tcp) else None
        return probe(check, spec.host, port or spec.port, env, running.launch.working_dir, as_workload)

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
        for other in self.driver.seen_names():
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
                          pins: Pins | None, uses_env: dict[str, str]) -> ContainerLaunch | Blocked:
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
        return render_container(spec, image, volumes, gpus, uses_env)

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

    def gpus_held(
        self, name: str, desired: DesiredState, remembered: Callable[[ResourceKey], ResourceRecord | None], sharing: bool
    ) -> tuple[dict[int, str], dict[int, tuple[tuple[str, int], ...]]]:
        """GPUs of every other workload's run (running, or ended and waiting out its back-off to start again):
        held exclusively, or shared with the memory each sharer declared."""
        taken: dict[int, str] = {}
        shared: dict[int, tuple[tuple[str, int], ...]] = {}
        for other in self.driver.seen_names():
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


def _workloads(desired: DesiredState) -> dict[str, WorkloadSpec]:
    return {key.name: entry.resource.spec for key, entry in desired.resources.items() if isinstance(entry.resource, Workload)}
