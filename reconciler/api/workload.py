"""The Workload kind: something that runs, natively (a process, llama.cpp, vLLM) or in a container.

Its parts live beside it: how it restarts and is updated (`lifecycle`), its engines' options (`engine_options`),
container fields (`container`), checks (`checks`).
"""

from __future__ import annotations

from enum import Enum
from functools import cache
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from reconciler.api.activation import Activation
from reconciler.api.container import ContainerSecurity, addresses_overlap, PortMapping, PullPolicy, VolumeMount, valid_image_reference
from reconciler.api.checks import HealthCheck, Port
from reconciler.api.engine_args import described, guarded_reading
from reconciler.api.engine_options import LlamaCppOptions, VllmOptions
from reconciler.api.fallback import Fallback
from reconciler.api.lifecycle import Restart, UpdateStrategy
from reconciler.api.meta import Resource, Spec, empty_list
from reconciler.api.quantity import ByteQuantity


class Runtime(str, Enum):
    """native: a process on this host; container: an image run through the Docker Engine API."""

    native = "native"
    container = "container"


class Engine(str, Enum):
    """process: an arbitrary command; llama.cpp, vllm: servers rendered from the spec for a Model; gateway: the
    reconciler's OpenAI-compatible endpoint for every Model."""

    process = "process"
    llama_cpp = "llama.cpp"
    vllm = "vllm"
    gateway = "gateway"  # the reconciler's own OpenAI-compatible router in front of the engines (reconciler/gateway)


class GpuRequest(Spec):
    """GPU access is explicit: none unless asked for, by count or by index."""

    count: int = Field(0, ge=0, le=64, description="How many GPUs; assigned exclusively unless shared.")
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="Exactly these GPUs (NVML indices).")
    min_memory: ByteQuantity | None = Field(None, description="Each assigned GPU must have at least this much memory.")
    shareable: bool = Field(
        False, description="May share its GPUs with other shareable workloads (if the Policy allows sharing): "
                           "then minMemory is what it uses on each, and all sharers together must fit each GPU.",
    )

    @model_validator(mode="after")
    def _count_matches_indices(self) -> "GpuRequest":
        if self.shareable and self.min_memory is None:
            raise ValueError("a shareable GPU request needs minMemory: the memory it uses on each GPU, so sharers can be fitted")
        if self.indices is not None and len(set(self.indices)) != len(self.indices):
            raise ValueError(f"indices {self.indices} name a GPU twice")
        if self.indices is not None and self.count not in (0, len(self.indices)):
            raise ValueError(f"count {self.count} does not match the {len(self.indices)} indices given")
        return self

    @property
    def wanted(self) -> int:
        return len(self.indices) if self.indices is not None else self.count


class Resources(Spec):
    """Limits for the whole process tree, and GPUs."""

    memory: ByteQuantity | None = Field(
        None, description="Memory limit for the workload's processes (a cgroup where possible, else RLIMIT_DATA; a container: its engine cgroup)."
    )
    cpus: float | None = Field(None, gt=0, le=1024, description="CPU time, in CPUs (cgroup quota, else affinity).")
    gpus: GpuRequest = Field(default_factory=GpuRequest)


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Executable = Annotated[str, Field(min_length=1)]


# The variables llama-cpp-python's server (pydantic settings, any case) and llama-server read for where to listen or
# for a config file that replaces the command line; the flags are judged by engine_args, as each parser reads them.
_BIND_VARIABLES = frozenset({"HOST", "PORT", "CONFIG_FILE", "LLAMA_ARG_HOST", "LLAMA_ARG_PORT"})


class Use(Spec):
    """A workload this one calls: it is started only once that one is Ready, and is told where to reach it."""

    workload: str = Field(min_length=1, description="The Workload used (a container may use only a gateway).")
    env: EnvName = Field(description="The variable given the endpoint's URL, as this workload reaches it (e.g. "
                                     "OPENAI_API_BASE_URL): http://127.0.0.1:PORT natively, "
                                     "http://host.docker.internal:PORT from a container.")
    path: str = Field("", pattern=r"^(/[A-Za-z0-9._~/-]*)?$", description="Appended to the URL, e.g. /v1.")
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="Of a gateway: the Models (or aliases) a container may ask for; default: all.")


class WorkloadSpec(Spec):
    """Something that runs, natively (a process, llama.cpp, vLLM, the gateway) or in a container."""

    runtime: Runtime = Runtime.native
    engine: Engine = Engine.process
    command: list[Executable] | None = Field(
        None, min_length=1, description="engine process: executable and first arguments; never run through a shell."
    )
    args: list[str] = Field(default_factory=empty_list, description="Extra arguments, appended to what the engine renders.")
    env: dict[EnvName, str] = Field(
        default_factory=dict,
        description="The process's environment; a variable that makes a program load other code (LD_*, PYTHONPATH, "
                    "...) needs the Policy's native.loaderEnvironment.")
    working_dir: str | None = Field(
        None, description="Relative to the spec file's folder; default: a private folder in the state directory.")
    user: str | None = Field(
        None, pattern=r"^[a-z_][a-z0-9_-]*$", max_length=32,
        description="runtime native, reconciler running as root: the host user it runs as (the Policy's native.users "
                    "must list it; root needs native.runAsRoot). Default: a dynamic user of its own.")
    model: str | None = Field(None, description="The Model resource an AI engine serves.")
    host: str = Field("127.0.0.1", min_length=1, description="Bind address of an AI engine (loopback by default).")
    port: Port | None = Field(
        None, description="The port it serves on: an engine's port, the default for health checks; unique per address.")
    llama_cpp: LlamaCppOptions | None = None
    vllm: VllmOptions | None = None
    health: HealthCheck | None = Field(
        None, description="Liveness and readiness together: Ready while it passes; failing it stops the process (its "
                           "restart policy decides what next), and an update is judged by it.")
    readiness: HealthCheck | None = Field(
        None, description="Readiness only (e.g. a check that calls a backend): while it fails the workload is not Ready "
                          "(reason NotReady) and gets no traffic, but is not restarted, and an update is not judged "
                          "failed for it. Its failureThreshold and startupSeconds do not apply.")
    resources: Resources = Field(default_factory=Resources)
    restart: Restart = Field(default_factory=Restart)
    update: UpdateStrategy = Field(default_factory=UpdateStrategy)
    termination_grace_period_seconds: float = Field(
        10.0, ge=0, le=3600, description="SIGTERM to the process group, then SIGKILL after this many seconds.")
    image: str | None = Field(None, description="runtime container: the image, best pinned as name@sha256:<digest>.")
    image_pull_policy: PullPolicy = Field(
        PullPolicy.if_not_present, description="IfNotPresent pulls a missing image (if the policy allows pulls)."
    )
    ports: list[PortMapping] = Field(default_factory=empty_list, description="runtime container: published ports.")
    volumes: list[VolumeMount] = Field(default_factory=empty_list, description="runtime container: bind mounts.")
    network: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="runtime container: a Docker network. Default: 'bridge' if ports are published, else 'none'.",
    )
    security: ContainerSecurity = Field(default_factory=ContainerSecurity)
    activation: Activation = Field(
        default_factory=Activation, description="Always running, or OnDemand: started by the gateway's requests.")
    fallback: Fallback | None = Field(
        None, description="A hosted provider to use while this host cannot run it, if the Policy allows and a person consents.",
    )
    uses: list[Use] = Field(
        default_factory=empty_list, description="Workloads this one calls: it starts after they are Ready, with their "
                                          "endpoints in its environment.")

    @model_validator(mode="after")
    def _no_nul(self) -> "WorkloadSpec":
        """A NUL cannot reach a program (argv and environ are C strings): refused here, not by the exec at start."""
        texts = [*(self.command or ()), *self.args, *self.env.values(), self.working_dir or "",
                 *(check.exec.command for check in (self.health, self.readiness) if check and check.exec)]
        if any("\0" in text for text in texts):
            raise ValueError("a command, argument, environment value or working directory contains a NUL character")
        return self

    @model_validator(mode="after")
    def _uses_name_their_own_variables(self) -> "WorkloadSpec":
        names = [use.env for use in self.uses]
        clash = next((name for name in names if name in self.env or names.count(name) > 1), None)
        if clash is not None:
            raise ValueError(f"env {clash} is set twice (spec.env or another of spec.uses): a use gives it its value")
        reserved = next((name for name in names if name.upper() in _BIND_VARIABLES or _gpu_variable(name)), None)
        if reserved is not None:  # a URL there would move a server or hand out GPUs past the gate's rules
            raise ValueError(f"spec.uses may not set env {reserved}: name a variable the program reads an endpoint from")
        return self

    @field_validator("image")
    @classmethod
    def _image_reference(cls, image: str | None) -> str | None:
        return None if image is None else valid_image_reference(image)

    @field_validator("env")
    @classmethod
    def _gpus_only_through_resources(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if _gpu_variable(name):
                raise ValueError(f"GPU access is explicit: request GPUs with spec.resources.gpus, not {name}")
        return env

    @model_validator(mode="after")
    def _fields_fit_the_runtime(self) -> "WorkloadSpec":
        if self.runtime is Runtime.native:
            given = [name for name in _CONTAINER_ONLY if self._set(name)]
            if given:
                raise ValueError(f"spec.{to_camel(given[0])} is for runtime 'container', not 'native'")
            return self
        if self.image is None:
            raise ValueError("runtime 'container' needs spec.image")
        if self.engine is not Engine.process:
            raise ValueError(f"engine {self.engine.value!r} runs natively: use runtime 'native' (or engine 'process' "
                             "with the engine's image)")
        given = [name for name in ("model", "host", "port", "user") if self._set(name)]
        if given:
            hint = {"host": " (publish container ports with spec.ports)", "port": " (publish container ports with "
                    "spec.ports)", "user": " (a container's user is spec.security.user)"}.get(given[0], "")
            raise ValueError(f"spec.{given[0]} is for runtime 'native', not 'container'{hint}")
        if self.working_dir is not None and not self.working_dir.startswith("/"):
            raise ValueError("spec.workingDir of a container is a path inside it: it must be absolute")
        if self.ports and self.network in ("none", "host"):
            raise ValueError(f"spec.ports cannot be published on network {self.network!r}")
        published = [(port.host_ip, port.published_port, port.protocol) for port in self.ports]
        for index, (ip, port, proto) in enumerate(published):
            clash = [f"{other_ip}:{port}" for other_ip, other_port, other_proto in published[index + 1:]
                     if (other_port, other_proto) == (port, proto) and addresses_overlap(ip, other_ip)]
            if clash:
                raise ValueError(f"spec.ports publishes {proto} port {port} twice ({ip}:{port} and {clash[0]})")
        return self

    @model_validator(mode="after")
    def _on_demand_is_reached_through_its_model(self) -> "WorkloadSpec":
        """Only a request for a Model through the gateway starts an on-demand workload: one that serves none would
        never start."""
        if self.activation.on_demand and (self.engine not in (Engine.llama_cpp, Engine.vllm) or not self.model):
            raise ValueError("activation OnDemand is for engines llama.cpp and vllm serving a spec.model: the gateway "
                             "starts it when a request names that Model")
        return self

    @model_validator(mode="after")
    def _fields_fit_the_engine(self) -> "WorkloadSpec":
        if self.runtime is Runtime.container:
            return self  # an image brings its own command; _fields_fit_the_runtime judged the rest
        if self.engine is Engine.process:
            if not self.command:
                raise ValueError("engine 'process' needs spec.command")
            for field in ("model", "llama_cpp", "vllm"):
                if getattr(self, field) is not None:
                    raise ValueError(f"spec.{to_camel(field)} is for engines llama.cpp and vllm, not 'process'")
            return self
        if self.command is not None:
            raise ValueError(f"engine {self.engine.value!r} renders its own command: put extra flags in spec.args")
        bind = guarded_reading(self.engine.value, self.args, "listen")
        if bind is not None:  # it would move the server past what the gate judged
            raise ValueError(f"spec.args may not set {described(bind)}: where an engine listens is spec.host and "
                             "spec.port, which the policy judges; a gateway's routes are the reconciler's")
        secret = guarded_reading(self.engine.value, self.args, "secrets")
        if secret is not None:  # the command line is recorded in plan, status and evidence
            raise ValueError(f"spec.args may not carry an API key ({described(secret)}): the command line is recorded "
                             "in plan, status and evidence; give llama-server --api-key-file FILE, or the key in "
                             "spec.env (LLAMA_API_KEY for llama-server, API_KEY for llama-cpp-python, VLLM_API_KEY for vllm)")
        variable = next((name for name in self.env if name.upper() in _BIND_VARIABLES), None)
        if variable is not None:
            raise ValueError(f"spec.env may not set {variable}: where an engine listens is spec.host and spec.port, "
                             "which the policy judges")
        if self.engine is Engine.gateway:
            given = next((field for field in ("model", "llama_cpp", "vllm") if getattr(self, field) is not None), None)
            if given is not None:
                raise ValueError(f"spec.{to_camel(given)} does not apply to engine 'gateway': it serves every Model "
                                 "through the workloads that serve them")
            if self.port is None:
                raise ValueError("engine 'gateway' needs spec.port")
            return self
        if self.model is None or self.port is None:
            raise ValueError(f"engine {self.engine.value!r} needs spec.model and spec.port")
        other = "vllm" if self.engine is Engine.llama_cpp else "llama_cpp"
        if getattr(self, other) is not None:
            raise ValueError(f"spec.{to_camel(other)} does not apply to engine {self.engine.value!r}")
        if self.engine is Engine.vllm and self.resources.gpus.wanted == 0:
            raise ValueError("engine 'vllm' needs an NVIDIA GPU: set spec.resources.gpus.count (or indices)")
        parallel = self.vllm.tensor_parallel_size if self.vllm else None
        if parallel is not None and parallel != self.resources.gpus.wanted:
            raise ValueError(f"vllm.tensorParallelSize {parallel} must equal the GPUs resources.gpus assigns "
                             f"({self.resources.gpus.wanted}): more cannot start, fewer leaves GPUs reserved and idle")
        return self

    @model_validator(mode="after")
    def _checks_know_their_port(self) -> "WorkloadSpec":
        if self.runtime is Runtime.native and self.readiness and self.readiness.exec:
            raise ValueError("spec.readiness of a native workload is an http or tcp check (an exec one would run a "
                             "program on the host that the policy does not judge): use spec.health for exec")
        for check in (self.health, self.readiness):
            probe = (check.http or check.tcp) if check else None
            if probe is None:
                continue
            if self.runtime is Runtime.container:
                published = {port.container_port for port in self.ports if port.protocol == "tcp"}
                port = probe.port or self.default_port
                if port not in published:
                    raise ValueError(f"an http or tcp health check of a container probes a published tcp port; "
                                     f"{port or 'no port'} is not in spec.ports (or use an exec check)")
            elif probe.port is None and self.port is None:
                raise ValueError("an http or tcp health check needs a port: set spec.port or the check's own port")
        return self

    def _set(self, name: str) -> bool:
        """Given a value other than its default (a stored record spells every default out)."""
        return getattr(self, name) != _defaults()[name]

    @property
    def listens(self) -> list[tuple[str, int, str]]:
        """(host address, port, protocol) this workload takes on the host."""
        if self.runtime is Runtime.container:
            return [(port.host_ip, port.published_port, port.protocol) for port in self.ports]
        return [(self.host, self.port, "tcp")] if self.port is not None else []

    @property
    def default_port(self) -> int | None:
        """The port a check probes when it names none: spec.port, or a container's first published port."""
        if self.runtime is Runtime.container:
            return self.ports[0].container_port if self.ports else None
        return self.port


def _gpu_variable(name: str) -> bool:
    return name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER") or name.startswith("NVIDIA_")


_CONTAINER_ONLY = ("image", "image_pull_policy", "ports", "volumes", "network", "security")


@cache
def _defaults() -> dict[str, object]:
    """WorkloadSpec's defaults, made once: pydantic inspects each default factory on every call."""
    return {name: info.get_default(call_default_factory=True) for name, info in WorkloadSpec.model_fields.items()}


class Workload(Resource):
    kind: Literal["Workload"] = "Workload"
    spec: WorkloadSpec
