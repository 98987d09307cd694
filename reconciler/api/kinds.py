"""The three user-written kinds: Workload, Model, Policy."""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from reconciler.api.meta import Resource, Spec
from reconciler.api.quantity import ByteQuantity


class Runtime(str, Enum):
    native = "native"
    container = "container"


class Engine(str, Enum):
    process = "process"


class RestartPolicy(str, Enum):
    always = "Always"
    on_failure = "OnFailure"
    never = "Never"


class Backoff(Spec):
    initial_seconds: float = Field(1.0, gt=0, le=3600)
    max_seconds: float = Field(300.0, gt=0, le=86400)
    reset_after_seconds: float = Field(
        600.0, gt=0, description="A process that ran this long before exiting starts its back-off afresh."
    )

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> "Backoff":
        if self.max_seconds < self.initial_seconds:
            raise ValueError("maxSeconds must not be below initialSeconds")
        return self


class Restart(Spec):
    policy: RestartPolicy = RestartPolicy.always
    backoff: Backoff = Field(default_factory=Backoff)


class Resources(Spec):
    memory: ByteQuantity | None = Field(
        None, description="Address-space limit for a native process (enforced with RLIMIT_AS)."
    )


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Executable = Annotated[str, Field(min_length=1)]


class WorkloadSpec(Spec):
    runtime: Runtime = Runtime.native
    engine: Engine = Engine.process
    command: list[Executable] = Field(min_length=1, description="Executable and its first arguments; never run through a shell.")
    args: list[str] = Field(default_factory=list)
    env: dict[EnvName, str] = Field(default_factory=dict)
    working_dir: str | None = None
    resources: Resources = Field(default_factory=Resources)
    restart: Restart = Field(default_factory=Restart)
    termination_grace_period_seconds: float = Field(10.0, ge=0, le=3600)

    @field_validator("runtime")
    @classmethod
    def _native_only_for_now(cls, runtime: Runtime) -> Runtime:
        if runtime is not Runtime.native:
            raise ValueError("runtime 'container' is not supported yet: use runtime 'native' with engine 'process'")
        return runtime

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


class Workload(Resource):
    kind: Literal["Workload"] = "Workload"
    spec: WorkloadSpec


class ModelFormat(str, Enum):
    gguf = "gguf"
    safetensors = "safetensors"


class ModelSpec(Spec):
    source: str = Field(min_length=1, description="A local path (absolute, or relative to the spec file).")
    format: ModelFormat = ModelFormat.gguf
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    size: ByteQuantity | None = None


class Model(Resource):
    kind: Literal["Model"] = "Model"
    spec: ModelSpec


class TrustedExecutable(Spec):
    executable: str = Field(
        min_length=1, description="A command name as written in command[0], or the absolute path it resolves to."
    )


class NativePolicy(Spec):
    trusted_executables: list[TrustedExecutable] = Field(default_factory=list)


class PolicySpec(Spec):
    native: NativePolicy = Field(default_factory=NativePolicy)


class Policy(Resource):
    kind: Literal["Policy"] = "Policy"
    spec: PolicySpec


KINDS: dict[str, type[Resource]] = {"Workload": Workload, "Model": Model, "Policy": Policy}
AnyResource = Workload | Model | Policy


def spec_hash(resource: Resource) -> str:
    """Stable digest of what the user asked for; a change bumps the generation."""
    spec = resource.spec.model_dump(mode="json", by_alias=True)  # type: ignore[attr-defined]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
