"""What exactly a native workload is started with, rendered from its spec (pure)."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from reconciler.api.kinds import WorkloadSpec

EXECUTABLE_FIELD = "the executable command[0] resolves to"
_FIELD_NAMES = {
    "command": "spec.command", "args": "spec.args", "env": "spec.env", "working_dir": "spec.workingDir",
    "memory_limit": "spec.resources.memory", "cpus": "spec.resources.cpus", "executable": EXECUTABLE_FIELD,
    "gpus": "the GPUs assigned",
    "engine": "spec.engine", "listen": "spec.host/port", "model": "the model (its Model or file)",
    "executable_from_spec": "the executable command[0] resolves to",
}


class LaunchSpec(BaseModel):
    """The effective launch; its digest decides whether a running process still matches its spec."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    engine: str = "process"
    command: tuple[str, ...]
    args: tuple[str, ...]
    executable: str | None  # the file that will run: found with the child's PATH and working dir
    env: dict[str, str]
    working_dir: str
    memory_limit: int | None
    cpus: float | None = None
    gpus: tuple[int, ...] = ()
    listen: tuple[str, int] | None = None  # checked free before the start
    model: str | None = None  # the served model file's identity: a changed file means a restart
    executable_from_spec: bool = False  # named by the spec (llamaCpp/vllm.executable), not chosen by the engine

    @property
    def argv(self) -> tuple[str, ...]:
        return (*self.command, *self.args)

    @property
    def digest(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def changed_fields(self, other: "LaunchSpec") -> list[str]:
        """The fields that differ, in the user's vocabulary (for a plan's cause)."""
        names = _FIELD_NAMES if self.engine == "process" else _FIELD_NAMES | {"args": "the engine's arguments"}
        return [label for field, label in names.items() if getattr(self, field) != getattr(other, field)]


def working_dir_for(spec: WorkloadSpec, spec_dir: PurePath, default_dir: PurePath) -> str:
    """Relative working directories are taken from the spec file's folder, as Compose does."""
    return str(spec_dir / spec.working_dir) if spec.working_dir else str(default_dir)


def render_launch(
    spec: WorkloadSpec, command: tuple[str, ...], args: tuple[str, ...], working_dir: str, executable: str | None,
    gpus: tuple[int, ...] = (), model: str | None = None, executable_from_spec: bool = False,
) -> LaunchSpec:
    return LaunchSpec(
        engine=spec.engine.value, command=command, args=args, executable=executable, env=dict(spec.env),
        working_dir=working_dir, memory_limit=spec.resources.memory, cpus=spec.resources.cpus, gpus=gpus,
        listen=(spec.host, spec.port) if spec.port else None, model=model, executable_from_spec=executable_from_spec,
    )
