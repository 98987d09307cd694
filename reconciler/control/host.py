"""What this host offers, observed at most every PROFILE_SECONDS and published beside the specs."""

from __future__ import annotations

import platform
import time
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path

from reconciler.api.host import HostProfile, host_profile_document
from reconciler.api.kinds import Engine, Workload
from reconciler.api.resource_record import ResourceRecord
from reconciler.load.desired import DesiredState
from reconciler.observe.docker_engine import DockerEngine
from reconciler.observe.engine_builds import EngineBuilds
from reconciler.observe.gpus import GpuInventory
from reconciler.observe.host_profile import observe_host_profile
from reconciler.record.recorder import Recorder

PROFILE_SECONDS = 30.0  # how stale the profile may get: free memory and disk move, capabilities rarely do


class HostWatch:
    def __init__(self, cache_dir: Path, engine: DockerEngine, recorder: Recorder | None, builds: EngineBuilds,
                 records: Callable[[], list[ResourceRecord]]) -> None:
        """`recorder`: where to publish it (None: a read-only command, which writes nothing); `builds`: what the
        host's llama.cpp builds answered; `records`: what each resource was last reconciled to.

        A profile nobody publishes is only read to judge specs (memory, CPU flags, GPUs): it leaves out the container
        engine's version and the host's llama.cpp builds, which only the published profile and the evidence show.
        A build a spec is judged by is asked where it is judged (`WorkloadRenderer`), from the same cache.

        The published profile asks the builds only while a llama.cpp workload is desired: asking one runs it (a
        Python that imports llama_cpp: 0.2 s, before a cold `apply` of containers could start any); it says so
        instead, and is observed again as soon as a llama.cpp workload appears, before that workload is judged."""
        self.cache_dir = cache_dir
        self.engine = engine
        self.builds = builds
        self.recorder = recorder
        self.profile: HostProfile | None = None
        self._observed_at: float | None = None
        self._builds_asked = False
        self._records = records

    def refresh(self, inventory: GpuInventory, desired: DesiredState) -> HostProfile:
        """`inventory`: the GPUs as the pass just read them (NVML's start-up is the slow part of asking it)."""
        published = self.recorder is not None
        ask_builds = published and self._llama_cpp_wanted(desired)
        if (self.profile is None or self._observed_at is None or ask_builds != self._builds_asked
                or time.monotonic() - self._observed_at >= PROFILE_SECONDS):
            unasked = "not asked: no llama.cpp workload is desired" if published else "not asked: a read-only command"
            self.profile = observe_host_profile(self.cache_dir, self.engine if published else None,
                                                self.builds if ask_builds else None, inventory, unasked)
            self._observed_at, self._builds_asked = time.monotonic(), ask_builds
            if self.recorder is not None:
                self.recorder.host_profile(host_profile_document(self.profile, platform.node() or "localhost",
                                                                 datetime.now(timezone.utc)))
        return self.profile

    def _llama_cpp_wanted(self, desired: DesiredState) -> bool:
        """A llama.cpp workload is desired, or runs on as last reconciled: held while its file has an error, or not
        yet changed or removed (its record's version is the one judged meanwhile)."""
        return any(isinstance(entry.resource, Workload) and entry.resource.spec.engine is Engine.llama_cpp
                   for entry in desired.resources.values()) or any(
            record.kind == "Workload" and record.resource.get("spec", {}).get("engine") == Engine.llama_cpp.value
            for record in self._records())

    @property
    def digest(self) -> str | None:
        """The capability digest each decision's evidence cites."""
        return self.profile.capability_digest() if self.profile else None
