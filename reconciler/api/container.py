"""The parts of a Workload spec that only containers have: image, ports, volumes, network, security."""

from __future__ import annotations

import ipaddress
import re
from enum import Enum
from typing import Annotated, Literal

from pydantic import Field, field_validator

from reconciler.api.meta import Spec, empty_list

# Docker's reference grammar (distribution/reference), anchored: [registry[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
IMAGE_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?$"
)

# Linux capabilities (capabilities(7)), as Docker names them without the CAP_ prefix.
CAPABILITIES = frozenset({
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE", "CHOWN",
    "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
    "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT",
    "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "WAKE_ALARM",
})
NOBODY = "65534:65534"  # the user a container runs as when neither the spec nor the image names a non-root one
LOOPBACK = "127.0.0.1"

Port = Annotated[int, Field(ge=1, le=65535)]


class PullPolicy(str, Enum):
    if_not_present = "IfNotPresent"
    never = "Never"


class PortMapping(Spec):
    """A container port published on the host: on loopback unless hostIP says (and the policy allows) otherwise."""

    container_port: Port = Field(description="The port inside the container.")
    host_port: Port | None = Field(None, description="Default: the container port.")
    host_ip: str = Field(LOOPBACK, alias="hostIP", description="The host address it is published on.")
    protocol: Literal["tcp", "udp"] = Field("tcp", description="tcp, or udp.")

    @field_validator("host_ip")
    @classmethod
    def _an_address(cls, value: str) -> str:
        return ip_address_text(value)

    @property
    def published_port(self) -> int:
        return self.host_port or self.container_port


class VolumeMount(Spec):
    source: str = Field(min_length=1, description="A host folder or file: absolute, or relative to the spec file.")
    target: str = Field(pattern=r"^/", description="Where it appears in the container (absolute).")
    read_only: bool = Field(True, description="Mounted read-only unless set to false.")


class ContainerSecurity(Spec):
    """Least privilege by default; each relaxation must also be allowed by the Policy's `containers` section."""

    capabilities: list[str] = Field(
        default_factory=empty_list, description="Capabilities added back after all are dropped (e.g. NET_BIND_SERVICE)."
    )
    read_only_root_filesystem: bool = Field(
        True, description="A tmpfs /tmp is always there; false needs the Policy's containers.writableRootFilesystem.")
    user: str | None = Field(
        None, pattern=r"^[0-9]+(:[0-9]+)?$",
        description="uid[:gid], numeric: a name could be root under another name in the image's /etc/passwd, and a "
                    "uid alone runs with group 0 (both need the policy's containers.root). "
                    "Default: the image's user if it is a numeric uid:gid without 0, else 65534:65534 (nobody).",
    )
    pids_limit: int = Field(512, ge=16, le=1_000_000, description="At most this many processes in the container.")

    @field_validator("capabilities")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return known_capabilities(names)


def known_capabilities(names: list[str]) -> list[str]:
    """Docker's spelling (no CAP_ prefix, upper case), sorted; an unknown name is an error, not ignored."""
    plain = [name.upper().removeprefix("CAP_") for name in names]
    unknown = [str(index) for index, bare in enumerate(plain) if bare not in CAPABILITIES]
    if unknown:
        raise ValueError(f"item {', '.join(unknown)}: expected a capability name of capabilities(7), e.g. NET_BIND_SERVICE")
    return sorted(set(plain))


def is_loopback(address: str) -> bool:
    """Whether an address (or 'localhost') stays on this host; a name or anything unparsable does not count."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def ip_address_text(value: str) -> str:
    """An IP address in its canonical spelling ('0:0::0' -> '::'), so comparisons are exact."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("expected an IP address (e.g. 127.0.0.1)") from None


def addresses_overlap(one: str, other: str) -> bool:
    """Whether two listeners on one port would collide: the same address, or either on every address."""
    return one == other or {one, other} & {"0.0.0.0", "::", ""} != set()


def valid_image_reference(reference: str) -> str:
    if not IMAGE_REFERENCE.match(reference) or len(reference) > 255:
        raise ValueError("expected an image reference: [registry/]name[:tag][@sha256:<64 hex>], name in lower case")
    return reference


def runs_as_root(user: str) -> bool:
    """uid or gid 0 (runc reads "00" as 0 too). A name counts as root, since any name may map to uid 0; so does a
    uid without a gid, which runc runs with group 0 unless the image's /etc/passwd says otherwise."""
    parts = user.split(":")
    return len(parts) != 2 or any(not part.isdigit() or int(part) == 0 for part in parts)
