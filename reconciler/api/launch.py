"""What exactly a workload is started with, rendered from its spec (pure): a native launch or a container's."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from reconciler.api.container import NOBODY, runs_as_root
from reconciler.api.kinds import WorkloadSpec

EXECUTABLE_FIELD = "the executable command[0] resolves to"
_FIELD_NAMES = {
    "command": "spec.command", "args": "spec.args", "env": "spec.env", "working_dir": "spec.workingDir",
    "memory_limit": "spec.resources.memory", "cpus": "spec.resources.cpus", "executable": EXECUTABLE_FIELD,
    "gpus": "the GPUs assigned",
    "engine": "spec.engine", "listen": "spec.host/port", "model": "the model (its Model or file)",
    "executable_from_spec": "the executable command[0] resolves to", "user": "spec.user",
    "container_listen": "the containers that use it (spec.uses)", "own_folders": "the state folders it writes",
}
_ADDED_LATER = ("container_listen", "extra_hosts", "own_folders")


class _Launch(BaseModel):
    """An effective launch; its digest decides whether what runs still matches its spec."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)
    field_names: ClassVar[dict[str, str]]

    @property
    def canonical(self) -> str:
        dumped = self.model_dump(mode="json")
        for name in _ADDED_LATER:  # left out while unused: a launch recorded before them keeps its digest
            if dumped.get(name) in (None, []):
                dumped.pop(name, None)
        return json.dumps(dumped, sort_keys=True)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    def changed_fields(self, other: "_Launch") -> list[str]:
        """The fields that differ, in the user's vocabulary (for a plan's cause)."""
        if type(other) is not type(self):
            return ["spec.runtime"]
        return [label for field, label in self.field_names.items() if getattr(self, field) != getattr(other, field)]


class LaunchSpec(_Launch):
    """A native process's launch."""

    field_names: ClassVar[dict[str, str]] = _FIELD_NAMES
    engine: Literal["process", "llama.cpp", "vllm", "gateway"] = "process"
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
    container_listen: str | None = None  # a gateway's second address: the host's on the container bridge
    user: str | None = None  # the spec's; None: a dynamic user of its own (as itself where the reconciler is not root)
    own_folders: tuple[str, ...] = ()  # folders of the state directory handed to its user (a gateway's spools)

    @property
    def argv(self) -> tuple[str, ...]:
        return (*self.command, *self.args)

    def changed_fields(self, other: _Launch) -> list[str]:
        changed = super().changed_fields(other)
        return changed if self.engine == "process" else ["the engine's arguments" if name == "spec.args" else name
                                                           for name in changed]


class PublishedPort(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"


class BindMount(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    source: str  # absolute, symlinks resolved: what the policy judged is what is mounted
    target: str
    read_only: bool = True


class ContainerLaunch(_Launch):
    """A container's effective configuration; its digest is the config-hash label on the container."""

    field_names: ClassVar[dict[str, str]] = {
        "image": "spec.image", "image_id": "the image (its ID)", "command": "spec.command", "args": "spec.args",
        "env": "spec.env", "working_dir": "spec.workingDir", "user": "spec.security.user", "ports": "spec.ports",
        "volumes": "spec.volumes", "network": "spec.network", "capabilities": "spec.security.capabilities",
        "read_only_root_filesystem": "spec.security.readOnlyRootFilesystem",
        "pids_limit": "spec.security.pidsLimit", "memory_limit": "spec.resources.memory",
        "cpus": "spec.resources.cpus", "gpus": "the GPUs assigned", "extra_hosts": "spec.uses",
    }
    engine: Literal["container"] = "container"
    image: str  # as the spec wrote it
    image_id: str | None  # what it names here now; None: not present, pulled at start
    image_user: str | None = None  # the USER the image declares
    command: tuple[str, ...] | None = None  # replaces the image's ENTRYPOINT
    args: tuple[str, ...] | None = None  # replaces the image's CMD
    env: dict[str, str] = {}
    working_dir: str | None = None
    user: str | None = None  # the spec's; see effective_user
    ports: tuple[PublishedPort, ...] = ()
    volumes: tuple[BindMount, ...] = ()
    network: str = "none"
    capabilities: tuple[str, ...] = ()
    read_only_root_filesystem: bool = True
    pids_limit: int = 512
    memory_limit: int | None = None
    cpus: float | None = None
    gpus: tuple[int, ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()  # name -> address in its /etc/hosts (host-gateway: the host)

    executable: ClassVar[None] = None  # nothing on the host is executed: the gate judges the image instead

    @property
    def pull(self) -> bool:
        return self.image_id is None

    @property
    def effective_user(self) -> str:
        """The spec's user; else the image's if it is numeric and not root; else nobody. Root only if the spec says so."""
        if self.user is not None:
            return self.user
        return self.image_user if self.image_user and not runs_as_root(self.image_user) else NOBODY

    @property
    def argv(self) -> tuple[str, ...]:
        return (*(self.command or ()), *(self.args or ()))


AnyLaunch = Annotated[LaunchSpec | ContainerLaunch, Field(discriminator="engine")]


def working_dir_for(spec: WorkloadSpec, spec_dir: PurePath, default_dir: PurePath) -> str:
    """Relative working directories are taken from the spec file's folder, as Compose does."""
    return str(spec_dir / spec.working_dir) if spec.working_dir else str(default_dir)


def render_launch(
    spec: WorkloadSpec, command: tuple[str, ...], args: tuple[str, ...], working_dir: str, executable: str | None,
    gpus: tuple[int, ...] = (), model: str | None = None, executable_from_spec: bool = False,
    engine_env: tuple[tuple[str, str], ...] = (), container_listen: str | None = None, own_folders: tuple[str, ...] = (),
) -> LaunchSpec:
    return LaunchSpec(
        engine=spec.engine.value, command=command, args=args, executable=executable, env=dict(spec.env) | dict(engine_env),
        working_dir=working_dir, memory_limit=spec.resources.memory, cpus=spec.resources.cpus, gpus=gpus,
        listen=(spec.host, spec.port) if spec.port else None, model=model, executable_from_spec=executable_from_spec,
        container_listen=container_listen, user=spec.user, own_folders=own_folders,
    )
