"""The three user-written kinds: Workload, Model, Policy."""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Literal

from pydantic import Field

from reconciler.api.meta import Resource, Spec
from reconciler.api.policy import ContainerPolicy, Policy, PolicySpec
from reconciler.api.quantity import ByteQuantity
from reconciler.api.workload import Engine, RestartPolicy, Runtime, Workload, WorkloadSpec

__all__ = ["ContainerPolicy", "Engine", "Policy", "PolicySpec", "RestartPolicy", "Runtime", "Workload", "WorkloadSpec"]


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


KINDS: dict[str, type[Resource]] = {"Workload": Workload, "Model": Model, "Policy": Policy}
AnyResource = Workload | Model | Policy


def spec_hash(resource: Resource) -> str:
    """Stable digest of what the user asked for; a change bumps the generation."""
    return hashlib.sha256(json.dumps(asked_spec(resource), sort_keys=True).encode()).hexdigest()


def asked_spec(resource: Resource) -> dict:
    """The spec without defaulted values: a new optional field in a newer reconciler changes nothing here."""
    return resource.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)  # type: ignore[attr-defined]
