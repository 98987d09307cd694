"""Turning a Workload into what would run on this host: model, engine command, GPUs, executable, health.

Observation (files, PATH, NVML, probes) happens here; every decision is made by the pure
functions it calls (preflight, engine_command, assign_gpus, render_launch, note_probe).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from reconciler.api.kinds import KINDS, Model, Workload
from reconciler.api.meta import ResourceKey
from reconciler.diff.gpus import assign_gpus
from reconciler.diff.health import note_probe, probe_due
from reconciler.diff.preflight import preflight
from reconciler.drive.engines import Blocked, EngineFacts, Rendered, engine_command
from reconciler.drive.launch import render_launch, working_dir_for
from reconciler.drive.process import child_path
from reconciler.drive.protocol import WorkloadDriver
from reconciler.load.desired import DesiredState
from reconciler.observe.gpus import GpuInventory, read_inventory
from reconciler.observe.host import ModelPresence, engine_facts, find_executable, observe_model
from reconciler.observe.probes import probe
from reconciler.observe.processes import ProcessObservation
from reconciler.record.store import ResourceRecord


class WorkloadRenderer:
    def __init__(self, root: Path, driver: WorkloadDriver) -> None:
        self.root = root
        self.driver = driver
        self.facts = EngineFacts()
        self.inventory = GpuInventory(reason="not observed yet")

    def observe_host(self) -> None:
        """Once per pass: which engines are installed, which GPUs exist."""
        self.facts = engine_facts()
        self.inventory = read_inventory()

    def render(
        self, desired: DesiredState, records: dict[ResourceKey, ResourceRecord], workload: Workload, file: str,
        process: ProcessObservation,
    ) -> Rendered:
        spec = workload.spec
        current = process.record.launch.gpus if process.running_pid and process.record else ()
        taken = self._gpus_taken(workload.name) if spec.resources.gpus.wanted else {}
        gpus = assign_gpus(spec.resources.gpus, self.inventory, taken, current)  # device capability first
        if isinstance(gpus, Blocked):
            return Rendered(blocked=gpus, check=spec.health)
        model, presence = self._model(desired, records, spec.model) if spec.model else (None, None)
        blocked = preflight(spec, model, presence)
        if blocked is not None:
            return Rendered(blocked=blocked, check=spec.health)
        command = engine_command(spec, str(presence.path) if presence else None, self.facts)
        if isinstance(command, Blocked):
            return Rendered(blocked=command, check=spec.health)
        default_dir = Path(self.driver.default_working_dir(workload.name))
        working_dir = working_dir_for(spec, (self.root / file).parent, default_dir)
        executable = find_executable(command.command[0], child_path(spec.env), working_dir)
        launch = render_launch(spec, command.command, command.args, working_dir, executable, gpus)
        return Rendered(launch, None, command.check, command.endpoint)

    def probe_if_due(
        self, record: ResourceRecord, rendered: Rendered, workload: Workload, process: ProcessObservation, now: datetime
    ) -> ResourceRecord:
        running, check = process.record, rendered.check
        if check is None or running is None or process.running_pid is None:
            return record
        if not probe_due(check, record.health, running.pid, running.started_at, now):
            return record
        result = probe(check, workload.spec.host, workload.spec.port)
        return record.model_copy(update={"health": note_probe(record.health, running.pid, result.ok, result.message, now)})

    def _model(
        self, desired: DesiredState, records: dict[ResourceKey, ResourceRecord], name: str
    ) -> tuple[Model | None, ModelPresence | None]:
        key = ResourceKey("Model", name)
        entry = desired.resources.get(key)
        if entry is not None:
            model, file = entry.resource, entry.file
        elif key in records:  # held (its new version unusable): the last valid one
            model, file = KINDS["Model"].model_validate(records[key].resource), records[key].source
        else:
            return None, None
        assert isinstance(model, Model)
        return model, observe_model((self.root / file).parent / model.spec.source)

    def _gpus_taken(self, name: str) -> dict[int, str]:
        taken: dict[int, str] = {}
        for other in self.driver.owned_names():
            if other == name:
                continue
            observed = self.driver.observe(other)
            if observed.running_pid and observed.record:
                taken |= {gpu: f"Workload/{other}" for gpu in observed.record.launch.gpus}
        return taken
