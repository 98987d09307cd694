"""The Policy kind: what may run on this host, what it may expose, and which changes wait for a human."""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from reconciler.api.container import Port, ip_address_text, known_capabilities
from reconciler.api.fallback import HostedPolicy
from reconciler.api.meta import Resource, Spec, empty_list
from reconciler.api.workload import Engine


def absolute_paths(roots: list[str], what: str) -> list[str]:
    relative = [str(index) for index, root in enumerate(roots) if not root.startswith("/")]
    if relative:
        raise ValueError(f"{what} must be absolute paths: item {', '.join(relative)} is not")
    return roots


class PolicyMode(str, Enum):
    """enforce: refuse what the rules do not allow; audit: apply every change, record what enforce would refuse."""

    enforce = "enforce"
    audit = "audit"  # apply every change, record what enforce would have refused: for trying a policy out


class TrustedExecutable(Spec):
    executable: str = Field(
        min_length=1, description="A command name as written in command[0], or the absolute path it resolves to."
    )
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="Pin: the file it resolves to must have this SHA-256, or it is not trusted.",
    )


class LoaderVariable(Spec):
    name: str = Field(min_length=1, description="A variable that makes a program load other code, e.g. LD_LIBRARY_PATH.")
    value: str = Field(description="The one value it may have.")


class NativePolicy(Spec):
    """What native workloads may run. Default: nothing is trusted."""

    trusted_executables: list[TrustedExecutable] = Field(
        default_factory=empty_list, description="Programs a native workload's command[0] may be, by name or path.")
    loader_environment: list[LoaderVariable] = Field(
        default_factory=empty_list,
        description="Variables a spec's env may set that make a trusted program load other code (the dynamic "
                    "loader's LD_*, an interpreter's search path), each allowed with exactly this value.",
    )
    trusted_engines: list[Engine] = Field(
        default_factory=empty_list,
        description="AI engines (llama.cpp, vllm, gateway) whose servers may run; the reconciler renders their command lines.",
    )

    run_as_root: bool = Field(
        False, description="Whether a spec may run as root (spec.user: root) when the reconciler is root. Otherwise a "
                           "native workload runs as a dynamic user of its own, or a user listed in users.")
    users: list[str] = Field(
        default_factory=empty_list, description="Host users a spec may name in spec.user (root needs runAsRoot instead).")

    @field_validator("trusted_engines")
    @classmethod
    def _not_process(cls, engines: list[Engine]) -> list[Engine]:
        if Engine.process in engines:
            raise ValueError("the process engine runs any command: trust its executables one by one instead")
        return engines


class ExposedAddress(Spec):
    address: str = Field(description="A host address beyond loopback (0.0.0.0 and :: mean every interface).")
    ports: list[Port] = Field(default_factory=empty_list, description="Ports that may be exposed on it (empty: any).")

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        return ip_address_text(address)

    def allows(self, address: str, port: int | None) -> bool:
        return address == self.address and (not self.ports or port in self.ports)


class NetworkPolicy(Spec):
    """Where servers may listen. Default: loopback only."""

    exposed: list[ExposedAddress] = Field(
        default_factory=empty_list,
        description="Where servers (engine binds, published container ports) may listen beyond loopback.",
    )
    privileged_ports: list[Port] = Field(
        default_factory=empty_list,
        description="Ports below 1024 that servers may listen on, on any address: they are the system's (ssh, dns, "
                    "http), and a workload there can pose as one of its services. None by default.",
    )

    local_containers: bool = Field(
        False, description="A gateway may also listen on the host's address on the container bridge, for the containers "
                           "that declare they use it (spec.uses): reachable from local containers, not from the network.")

    def allows(self, address: str, port: int | None) -> bool:
        return any(rule.allows(address, port) for rule in self.exposed)


class ContainerPolicy(Spec):
    """What containers may do. The default allows no image; everything else stays at least privilege."""

    images: list[str] = Field(
        default_factory=empty_list,
        description="Image references that may run: '*' matches within one path component, '**' across them.",
    )
    require_digest: bool = Field(False, description="Whether images must be pinned as name@sha256:<digest>.")
    pull: bool = Field(False, description="Whether a missing image may be pulled from its registry.")
    networks: list[str] = Field(
        default_factory=empty_list,
        description="Networks containers may join (publishing ports needs 'bridge'); each gives outbound access.",
    )
    host_network: bool = Field(False, description="Whether a container may share the host's network namespace.")
    writable_volumes: bool = Field(False, description="Whether a volume may be mounted writable (readOnly: false).")
    capabilities: list[str] = Field(default_factory=empty_list, description="Capabilities a spec may add back.")
    writable_root_filesystem: bool = Field(False, description="Whether a container's root filesystem may be writable.")
    root: bool = Field(False, description="Whether a spec may run a container as root.")
    volume_roots: list[str] = Field(
        default_factory=empty_list, description="Host folders (absolute) under which volume sources may lie."
    )

    @field_validator("capabilities")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return known_capabilities(names)

    @field_validator("volume_roots")
    @classmethod
    def _absolute(cls, roots: list[str]) -> list[str]:
        return absolute_paths(roots, "volume roots")


class ResourcePolicy(Spec):
    """Memory and GPUs: how much the workloads together may commit."""

    memory_reserve: float = Field(
        0.1, ge=0, lt=1,
        description="Share of host RAM kept for the system: workloads' memory limits and model footprints "
                    "together must fit in the rest.",
    )
    overcommit: bool = Field(False, description="Whether starts may commit more memory than that.")
    gpu_sharing: bool = Field(
        False, description="Whether workloads marked shareable may share a GPU (each declares the GPU memory it uses); "
                           "otherwise every GPU is assigned to one workload.")


class ApprovalKind(str, Enum):
    native_executable = "NativeExecutable"  # a program trusted by name or path (not an engine the reconciler renders)
    exposure = "Exposure"  # listening beyond loopback
    privilege = "Privilege"  # a container relaxed from least privilege, a native workload as root
    any_change = "AnyChange"


class ApprovalPolicy(Spec):
    """Which starts wait for a person's answer. Default: none."""

    required: list[ApprovalKind] = Field(
        default_factory=empty_list,
        description="Changes that wait for `reconciler approve NAME` (each approval covers one exact spec).",
    )


class ModelPolicy(Spec):
    """Where model files may be read from and fetched from."""

    roots: list[str] = Field(
        default_factory=empty_list,
        description="Host folders (absolute) local model files may be read from, besides the desired-state folder; "
                    "a source that resolves elsewhere (through '..' or a symlink) is never opened.",
    )
    sources: list[str] = Field(
        default_factory=empty_list,
        description="Hosts models may be fetched from over http(s), as 'host' or 'host:port'; '*' matches within one "
                    "label ('*.hf.co'). Empty: any host whose addresses are public.",
    )
    internal_networks: list[str] = Field(
        default_factory=empty_list,
        description="Non-public networks (CIDR: loopback, private, link-local) a source's host may resolve to. A "
                    "host resolving to any other non-public address is never connected to.",
    )

    @field_validator("roots")
    @classmethod
    def _absolute(cls, roots: list[str]) -> list[str]:
        return absolute_paths(roots, "model roots")

    @field_validator("sources")
    @classmethod
    def _hosts(cls, patterns: list[str]) -> list[str]:
        urls = [pattern for pattern in patterns if "/" in pattern or "@" in pattern]
        if urls:
            raise ValueError(f"sources are hosts ('huggingface.co', '*.lan:8080'), not URLs: {urls[0]!r}")
        return [pattern.lower() for pattern in patterns]

    @field_validator("internal_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        try:
            return [str(ipaddress.ip_network(network, strict=False)) for network in networks]
        except ValueError as error:
            raise ValueError(f"internal networks are CIDR ranges (127.0.0.0/8, fd00::/8): {error}") from None


class PolicySpec(Spec):
    """The rules every start and restart passes, and what runs is judged against on every pass. At most one Policy
    per host; without one the built-in default applies (nothing native trusted, no image, loopback only)."""

    mode: PolicyMode = PolicyMode.enforce
    native: NativePolicy = Field(default_factory=NativePolicy)
    network: NetworkPolicy = Field(default_factory=NetworkPolicy)
    containers: ContainerPolicy = Field(default_factory=ContainerPolicy)
    resources: ResourcePolicy = Field(default_factory=ResourcePolicy)
    approvals: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    hosted: HostedPolicy = Field(default_factory=HostedPolicy)
    models: ModelPolicy = Field(default_factory=ModelPolicy)

    @model_validator(mode="before")
    @classmethod
    def _earlier_exposure_field(cls, data: Any) -> Any:
        """containers.exposedAddresses (before exposure covered engine binds too) reads as network.exposed:
        policies and state written by earlier versions keep their meaning."""
        containers = data.get("containers") if isinstance(data, dict) else None
        if not isinstance(containers, dict) or "exposedAddresses" not in containers:
            return data
        containers = dict(containers)
        addresses = containers.pop("exposedAddresses") or []
        network = dict(data.get("network") or {})
        network["exposed"] = [*(network.get("exposed") or []), *({"address": address} for address in addresses)]
        return {**data, "containers": containers, "network": network}


class Policy(Resource):
    kind: Literal["Policy"] = "Policy"
    spec: PolicySpec
