"""What exactly a native workload is started with, rendered from its spec (pure)."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from reconciler.api.kinds import WorkloadSpec


class LaunchSpec(BaseModel):
    """The effective command line; its digest decides whether a running process still matches its spec."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    argv: tuple[str, ...]
    env: dict[str, str]
    working_dir: str | None
    memory_limit: int | None

    @property
    def digest(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def changed_fields(self, other: "LaunchSpec") -> list[str]:
        """The spec fields that differ, in the user's vocabulary (for a plan's cause)."""
        names = {"argv": "spec.command/args", "env": "spec.env", "working_dir": "spec.workingDir",
                 "memory_limit": "spec.resources.memory"}
        return [label for field, label in names.items() if getattr(self, field) != getattr(other, field)]


def render_launch(spec: WorkloadSpec, spec_dir: PurePath) -> LaunchSpec:
    """Relative working directories are taken from the spec file's folder, as Compose does."""
    working_dir = str(spec_dir / spec.working_dir) if spec.working_dir else None
    return LaunchSpec(
        argv=tuple(spec.argv), env=dict(spec.env), working_dir=working_dir, memory_limit=spec.resources.memory
    )
