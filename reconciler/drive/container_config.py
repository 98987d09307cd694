"""A container's configuration as the engine takes it, and as the reconciler reads it back from the labels. Pure.

Ownership and change detection live on the container, as Compose does it: labels name the owner (a state
directory), the workload, its generation, its effective configuration and that configuration's hash.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from reconciler.api.launch import ContainerLaunch
from reconciler.observe.docker_engine import CONFIG_HASH_LABEL, LAUNCH_LABEL, OWNER_LABEL, WORKLOAD_LABEL, intact_launch

if TYPE_CHECKING:
    from docker.models.containers import Container

GENERATION_LABEL = "dev.localaistack.generation"


def create_args(name: str, container_name: str, owner: str, launch: ContainerLaunch, generation: int) -> dict[str, Any]:
    """The engine's create arguments for a launch: least privilege always, and the labels that make it ours."""
    from docker.types import DeviceRequest, LogConfig, Mount  # the SDK loads where a container is made (sdk_errors)

    bindings: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for port in launch.ports:
        bindings[f"{port.container_port}/{port.protocol}"].append((port.host_ip, port.host_port))
    gpus = ",".join(map(str, launch.gpus)) or "void"  # overrides an image's own NVIDIA_VISIBLE_DEVICES=all
    return {
        "image": launch.image_id, "name": container_name, "detach": True,
        "entrypoint": list(launch.command) if launch.command else None,
        "command": list(launch.args) if launch.args is not None else None,
        "environment": launch.env | {"NVIDIA_VISIBLE_DEVICES": gpus}, "working_dir": launch.working_dir,
        "user": launch.effective_user,
        "labels": {
            OWNER_LABEL: owner, WORKLOAD_LABEL: name, GENERATION_LABEL: str(generation),
            CONFIG_HASH_LABEL: launch.digest, LAUNCH_LABEL: launch.canonical,
        },
        # no GPU unless assigned: never a default runtime (e.g. nvidia's) that would hand out every GPU
        "runtime": None if launch.gpus else "runc",
        "cap_drop": ["ALL"], "cap_add": list(launch.capabilities) or None, "security_opt": ["no-new-privileges"],
        "privileged": False, "read_only": launch.read_only_root_filesystem,
        "tmpfs": {"/tmp": tmpfs_options(launch.effective_user)}, "network_mode": launch.network, "init": True,
        "extra_hosts": dict(launch.extra_hosts) or None,
        "ports": dict(bindings),
        "mounts": [Mount(volume.target, volume.source, type="bind", read_only=volume.read_only)
                   for volume in launch.volumes],
        "mem_limit": launch.memory_limit, "nano_cpus": int(launch.cpus * 1e9) if launch.cpus else None,
        "pids_limit": launch.pids_limit, "restart_policy": {"Name": "no"},  # restarts are the reconciler's call
        "device_requests": [DeviceRequest(device_ids=[str(gpu) for gpu in launch.gpus], capabilities=[["gpu"]])]
        if launch.gpus else None,
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"}),
    }


def launch_of(container: Container) -> ContainerLaunch | None:
    """The configuration a container was made with, if its labels are intact (else it is replaced, not adopted)."""
    text = intact_launch(container.labels)
    if text is None:
        return None
    try:
        return ContainerLaunch.model_validate_json(text)
    except ValidationError:
        return None


def tmpfs_options(user: str) -> str:
    """A /tmp the container's user can write: owned by it where the user is numeric, since some runc and
    kernel pairings drop tmpfs's mode=1777."""
    owner = user.split(":")
    numeric = all(part.isdigit() for part in owner)
    ids = f",uid={owner[0]},gid={owner[-1]}" if numeric else ""
    return f"rw,nosuid,nodev,size=64m,mode=1777{ids}"


def enforcement(launch: ContainerLaunch) -> dict[str, str]:
    privileges = ", ".join([
        "all capabilities dropped" + (f" but {', '.join(launch.capabilities)}" if launch.capabilities else ""),
        "no-new-privileges", "read-only root filesystem" if launch.read_only_root_filesystem else "writable root filesystem",
        f"user {launch.effective_user}", f"network {launch.network}",
    ])
    enforcement = {"privileges": privileges, "pids": f"container pids limit {launch.pids_limit}"}
    if launch.memory_limit:
        enforcement["memory"] = f"container memory limit {launch.memory_limit} bytes (engine cgroup)"
    if launch.cpus:
        enforcement["cpus"] = f"container CPU quota {launch.cpus} CPUs (engine cgroup)"
    return enforcement
