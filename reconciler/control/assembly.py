"""The collaborators of one reconciler, each built once, here, and handed to the steps of a pass that use them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from reconciler.api.meta import ResourceKey
from reconciler.control.activation import Activation
from reconciler.control.gateway_routes import RoutesPublisher
from reconciler.control.holds import Holds
from reconciler.control.host import HostWatch
from reconciler.control.judge import Judge
from reconciler.control.metrics import Metrics
from reconciler.control.models import ModelStore
from reconciler.control.remembered import Remembered
from reconciler.control.rollout import Rollouts
from reconciler.control.workloads import WorkloadRenderer
from reconciler.drive.containers import ContainerDriver
from reconciler.drive.dispatch import Drivers
from reconciler.drive.process import ProcessDriver, owner_id
from reconciler.gateway.routes_file import routes_path
from reconciler.observe import clock
from reconciler.observe.docker_engine import DockerEngine
from reconciler.observe.engine_builds import EngineBuilds
from reconciler.observe.host import boot_id
from reconciler.observe.git import local_revision
from reconciler.record.approvals import ApprovalStore
from reconciler.record.evidence import HOST_EVIDENCE_FILE
from reconciler.record.recorder import Recorder
from reconciler.record.store import StateStore


@dataclass(frozen=True)
class Parts:
    root: Path  # absolute, not resolved: a GitOps root is a link each revision replaces; derived paths must hold
    shown_root: Path  # as the user typed it: error messages name files this way
    state_dir: Path
    remembered: Remembered
    approvals: ApprovalStore
    drivers: Drivers
    models: ModelStore
    routes: RoutesPublisher
    workloads: WorkloadRenderer
    judge: Judge
    recorder: Recorder
    activation: Activation  # on-demand workloads: their demand, idle clocks and evictions
    host: HostWatch
    holds: Holds
    rollouts: Rollouts
    metrics: Metrics | None
    readonly: bool
    revision: Callable[[], str | None]  # which revision of its source the desired state is
    channel: str  # where that source is, for the decision records
    # each workload's last Runtime Decision Record and its digest (control/recording.py)
    decision_records: dict[ResourceKey, tuple[dict[str, Any], str]] = field(default_factory=dict)

    def log_file(self, key: ResourceKey) -> str | None:
        """A workload's log file (other kinds have none)."""
        return self.drivers.log_path(key.name) if key.kind == "Workload" else None


def assemble(
    root: Path, state_dir: Path, *, allow_empty: bool = False, on_exit: Callable[[str], None] | None = None,
    readonly: bool = False, on_engine_back: Callable[[], None] | None = None, metrics: Metrics | None = None,
    on_model_fetched: Callable[[], None] | None = None, terminal: TextIO | None = None,
    revision: Callable[[], str | None] | None = None, channel: str | None = None, offline: bool = False,
) -> Parts:
    """See `Reconciler` for the options."""
    absolute = Path(os.path.abspath(root))
    state_dir = state_dir.resolve()  # paths derived from it (working dirs) must not depend on how it was typed
    clock.adopt(state_dir, readonly=readonly)
    remembered = Remembered(StateStore(state_dir))
    approvals = ApprovalStore(state_dir)
    engine = DockerEngine()
    drivers = Drivers(
        ProcessDriver(state_dir, on_exit=on_exit, readonly=readonly),
        ContainerDriver(state_dir, owner_id(state_dir), engine, on_exit=on_exit, readonly=readonly,
                        on_engine_back=on_engine_back),
    )
    models = ModelStore(absolute, state_dir, background=on_model_fetched is not None, on_fetched=on_model_fetched,
                        terminal=terminal, network=not offline, record=not readonly)
    routes = RoutesPublisher(routes_path(state_dir))
    builds = EngineBuilds(state_dir, record=not readonly)  # what each llama.cpp build here can offload to
    workloads = WorkloadRenderer(absolute, drivers, engine, remembered.get, models, str(routes.path), builds)
    recorder = Recorder(absolute, state_dir / HOST_EVIDENCE_FILE)
    return Parts(
        root=absolute, shown_root=root, state_dir=state_dir, remembered=remembered, approvals=approvals,
        drivers=drivers, models=models, routes=routes, workloads=workloads, judge=Judge(workloads, approvals),
        recorder=recorder, activation=Activation(state_dir, workloads, drivers, recorder),
        host=HostWatch(state_dir, engine, None if readonly else recorder, builds, remembered.all),
        holds=Holds(remembered.all, allow_empty),
        rollouts=Rollouts(approvals, recorder.evidence, drivers.log_path, boot_id()), metrics=metrics,
        readonly=readonly, revision=revision or (lambda: local_revision(absolute)),
        channel=channel or f"folder {absolute}",
    )
