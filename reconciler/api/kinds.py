"""The three user-written kinds: Workload, Model, Policy."""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from reconciler.api.meta import Resource, Spec, empty_list
from reconciler.api.policy import ContainerPolicy, Policy, PolicySpec
from reconciler.api.quantity import ByteQuantity
from reconciler.api.lifecycle import RestartPolicy
from reconciler.api.workload import Engine, Runtime, Workload, WorkloadSpec

__all__ = ["ContainerPolicy", "Engine", "Policy", "PolicySpec", "RestartPolicy", "Runtime", "Workload", "WorkloadSpec"]


class ModelFormat(str, Enum):
    """gguf: its footprint is read from the file's header; safetensors: a variant needs a declared size."""

    gguf = "gguf"
    safetensors = "safetensors"


_REMOTE = ("https://", "http://", "file://")


class VariantNeeds(Spec):
    """What this host must have for the variant to be chosen."""

    engine: Engine | None = Field(None, description="The engine that can serve it (e.g. vllm for awq).")
    gpu_memory: ByteQuantity | None = Field(None, description="Memory each assigned GPU must have.")
    cpu_flags: list[str] = Field(default_factory=empty_list, description="CPU flags it needs (e.g. avx512f).")


class ModelVariant(Spec):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Named in the status message, plan and evidence.")
    source: str = Field(min_length=1, description="A local path, file:// or https:// URL.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Required for a URL: what is verified.")
    size: ByteQuantity | None = Field(None, description="Bytes on disk, when no GGUF header says so.")
    needs: VariantNeeds = Field(default_factory=VariantNeeds)

    @model_validator(mode="after")
    def _pinned_if_fetched(self) -> "ModelVariant":
        if self.source.startswith(_REMOTE) and self.sha256 is None:
            raise ValueError(f"{self.source.split('://')[0]} sources are fetched, and only a pinned sha256 is trusted: set sha256")
        return self

    @property
    def remote(self) -> bool:
        return self.source.startswith(_REMOTE)


class OnUnreachable(str, Enum):
    wait = "Wait"  # an unreachable preferred variant is waited for: a short outage never swaps the model
    next_variant = "NextVariant"  # go on to the next variant while it cannot be reached


def _no_dot_dot(alias: str) -> str:
    if ".." in alias:
        raise ValueError(f"an alias is a name, not a path: {alias!r} has '..'")
    return alias


ModelAlias = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"), AfterValidator(_no_dot_dot)]


class ModelSpec(Spec):
    """A model file: a local path, or file:// and https:// sources pinned by sha256, optionally as variants fitted
    to this host before anything is fetched."""

    source: str | None = Field(None, min_length=1, description="A local path (absolute, or relative to the spec "
                                                                "file), or a file:// or https:// URL (needs sha256).")
    format: ModelFormat = ModelFormat.gguf
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Required for a URL: only these bytes "
                               "are accepted; a local file's digest is checked whenever the file changes.")
    size: ByteQuantity | None = None
    variants: list[ModelVariant] = Field(
        default_factory=empty_list, description="Alternatives in order of preference: the first that fits this host is used.")
    on_unreachable: OnUnreachable = Field(
        OnUnreachable.wait, description="A variant whose size cannot be judged because its source cannot be reached: "
                                        "Wait for it (the default), or take the NextVariant that fits meanwhile.")
    aliases: list[ModelAlias] = Field(
        default_factory=empty_list, max_length=32,
        description="Other names a client may ask the gateway for it by (e.g. gpt-4o-mini); a Model's own name always "
                    "means that Model, and an alias two Models declare means neither.")

    @model_validator(mode="after")
    def _one_way_to_name_the_bytes(self) -> "ModelSpec":
        if (self.source is None) == (not self.variants):
            raise ValueError("give spec.source, or spec.variants (alternatives in order of preference), not both")
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        if len(set(self.aliases)) != len(self.aliases):
            raise ValueError(f"aliases must be unique: {self.aliases}")
        if self.source is not None:
            ModelVariant(name="default", source=self.source, sha256=self.sha256, size=self.size)  # same rules
        return self

    def options(self) -> list[ModelVariant]:
        """Variants in preference order; a plain source is the one variant 'default'."""
        if self.variants:
            return list(self.variants)
        assert self.source is not None
        return [ModelVariant(name="default", source=self.source, sha256=self.sha256, size=self.size)]


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
