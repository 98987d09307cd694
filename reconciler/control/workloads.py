"""Turning a Workload into what would run on this host: model, engine command, GPUs, executable, health.

Observation (files, PATH, NVML, probes) happens here; every decision is made by the pure
functions it calls (preflight, engine_command, assign_gpus, render_launch, note_probe).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from reconciler.api.kinds import KINDS, Model, Workload
from reconciler.api.meta import ResourceKey
from reconciler.diff.gpus import assign_gpus
from reconciler.diff.health import note_probe, probe_due
from reconciler.diff.preflight import preflight
from reconciler.diff.engines import Blocked, Rendered, engine_check, engine_command, engine_endpoint
from reconciler.api.launch import render_launch, working_dir_for
from reconciler.drive.process import PASSED_THROUGH, child_path
from reconciler.drive.protocol import WorkloadDriver
from reconciler.load.desired import DesiredState
from reconciler.observe.gpus import GpuInventory, read_inventory
from reconciler.observe.host import EngineFacts, ModelPresence, engine_facts, find_executable, observe_model
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
        self, desired: DesiredState, remembered: Callable[[ResourceKey], ResourceRecord | None], workload: Workload,
        file: str, process: ProcessObservation,
    ) -> Rendered:
        spec = workload.spec
        check, endpoint = engine_check(spec, self.facts), engine_endpoint(spec)  # kept even when a start is blocked

        def blocked(why: Blocked) -> Rendered:
            return Rendered(blocked=why, check=check, endpoint=endpoint)

        current = process.record.launch.gpus if process.record else ()
        taken = self._gpus_held(workload.name) if spec.resources.gpus.wanted else {}
        gpus = assign_gpus(spec.resources.gpus, self.inventory, taken, current)  # device capability first
        if isinstance(gpus, Blocked):
            return blocked(gpus)
        model, presence = self._model(desired, remembered, spec.model) if spec.model else (None, None)
        refused = preflight(spec, model, presence)
        if refused is not None:
            return blocked(refused)
        command = engine_command(spec, str(presence.path) if presence else None, self.facts)
        if isinstance(command, Blocked):
            return blocked(command)
        default_dir = Path(self.driver.default_working_dir(workload.name))
        working_dir = working_dir_for(spec, (self.root / file).parent, default_dir)
        executable = find_executable(command.command[0], child_path(spec.env), working_dir)
        launch = render_launch(spec, command.command, command.args, working_dir, executable, gpus,
                               presence.identity if presence else None, command.executable_from_spec)
        return Rendered(launch, None, check, endpoint)

    def probe_if_due(
        self, record: ResourceRecord, rendered: Rendered, workload: Workload, process: ProcessObservation, now: datetime
    ) -> ResourceRecord:
        running, check = process.record, rendered.check
        if check is None or running is None or process.running_pid is None:
            return record
        if not probe_due(check, record.health, running.pid, running.started_at, now):
            return record
        env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ} | workload.spec.env
        result = probe(check, workload.spec.host, workload.spec.port, env, running.launch.working_dir)
        ended = datetime.now(timezone.utc)  # the next period counts from the end of a slow probe, not its start
        return record.model_copy(update={"health": note_probe(record.health, running.pid, result.ok, result.message, ended)})

    def check_executables(self, rendered: Rendered, workload: Workload) -> tuple[str, ...]:
        """What an exec health check would run, for the gate: as written, as found, as resolved."""
        if rendered.check is None or rendered.check.exec is None or rendered.launch is None:
            return ()
        written = rendered.check.exec.command[0]
        found = find_executable(written, child_path(workload.spec.env), rendered.launch.working_dir)
        return (written, found, os.path.realpath(found)) if found else (written,)

    def _model(
        self, desired: DesiredState, remembered: Callable[[ResourceKey], ResourceRecord | None], name: str
    ) -> tuple[Model | None, ModelPresence | None]:
        key = ResourceKey("Model", name)
        entry, record = desired.resources.get(key), remembered(key)
        if entry is not None:
            model, file = entry.resource, entry.file
        elif record is not None:  # held (its new version unusable): the last valid one
            model, file = KINDS["Model"].model_validate(record.resource), record.source
        else:
            return None, None
        assert isinstance(model, Model)
        return model, observe_model((self.root / file).parent / model.spec.source)

    def _gpus_held(self, name: str) -> dict[int, str]:
        """GPUs of every other recorded process: running, or ended and waiting out its back-off."""
        taken: dict[int, str] = {}
        for other in self.driver.owned_names():
            observed = self.driver.observe(other) if other != name else None
            if observed is not None and observed.record:
                taken |= {gpu: f"Workload/{other}" for gpu in observed.record.launch.gpus}
        return taken
