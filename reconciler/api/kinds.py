"""The three user-written kinds: Workload, Model, Policy."""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Literal

from pydantic import Field, field_validator

from reconciler.api.container import ip_address_text, known_capabilities
from reconciler.api.meta import Resource, Spec
from reconciler.api.quantity import ByteQuantity
from reconciler.api.workload import Engine, RestartPolicy, Runtime, Workload, WorkloadSpec

__all__ = ["Engine", "RestartPolicy", "Runtime", "Workload", "WorkloadSpec"]


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
    trusted_engines: list[Engine] = Field(
        default_factory=list,
        description="AI engines (llama.cpp, vllm) whose servers may run; the reconciler renders their command lines.",
    )


class ContainerPolicy(Spec):
    """What containers may do. The default allows no image; everything else stays at least privilege."""

    images: list[str] = Field(
        default_factory=list,
        description="Image references that may run: '*' matches within one path component, '**' across them.",
    )
    pull: bool = Field(False, description="Whether a missing image may be pulled from its registry.")
    networks: list[str] = Field(
        default_factory=list,
        description="Networks containers may join (publishing ports needs 'bridge'); each gives outbound access.",
    )
    host_network: bool = Field(False, description="Whether a container may share the host's network namespace.")
    writable_volumes: bool = Field(False, description="Whether a volume may be mounted writable (readOnly: false).")
    capabilities: list[str] = Field(default_factory=list, description="Capabilities a spec may add back.")
    writable_root_filesystem: bool = False
    root: bool = Field(False, description="Whether a spec may run a container as root.")
    volume_roots: list[str] = Field(
        default_factory=list, description="Host folders (absolute) under which volume sources may lie."
    )
    exposed_addresses: list[str] = Field(
        default_factory=list, description="Host addresses other than loopback that ports may be published on."
    )

    @field_validator("capabilities")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return known_capabilities(names)

    @field_validator("exposed_addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        return [ip_address_text(address) for address in addresses]

    @field_validator("volume_roots")
    @classmethod
    def _absolute(cls, roots: list[str]) -> list[str]:
        relative = [root for root in roots if not root.startswith("/")]
        if relative:
            raise ValueError(f"volume roots must be absolute paths: {relative[0]!r}")
        return roots


class PolicySpec(Spec):
    native: NativePolicy = Field(default_factory=NativePolicy)
    containers: ContainerPolicy = Field(default_factory=ContainerPolicy)


class Policy(Resource):
    kind: Literal["Policy"] = "Policy"
    spec: PolicySpec


KINDS: dict[str, type[Resource]] = {"Workload": Workload, "Model": Model, "Policy": Policy}
AnyResource = Workload | Model | Policy


def spec_hash(resource: Resource) -> str:
    """Stable digest of what the user asked for; a change bumps the generation."""
    return hashlib.sha256(json.dumps(asked_spec(resource), sort_keys=True).encode()).hexdigest()


def asked_spec(resource: Resource) -> dict:
    """The spec without defaulted values: a new optional field in a newer reconciler changes nothing here."""
    return resource.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)  # type: ignore[attr-defined]
