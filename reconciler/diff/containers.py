"""How a container workload would run here: its effective configuration, and where its checks reach it. Pure."""

from __future__ import annotations

from reconciler.api.container import PullPolicy
from reconciler.api.launch import BindMount, ContainerLaunch, PublishedPort
from reconciler.api.checks import HealthCheck
from reconciler.api.workload import WorkloadSpec
from reconciler.diff.engines import Blocked
from reconciler.diff.uses import HOST_FROM_CONTAINERS, HOST_GATEWAY
from reconciler.observe.docker_engine import ImageFacts

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def render_container(
    spec: WorkloadSpec, image: ImageFacts | None, volumes: tuple[BindMount, ...], gpus: tuple[int, ...],
    uses_env: dict[str, str] | None = None,
) -> ContainerLaunch | Blocked:
    """`image`: what the reference names here now (None: absent); `volumes`: sources resolved on the host;
    `uses_env`: the endpoints of the workloads it uses, reached through the host's address on its bridge."""
    assert spec.image is not None
    if image is None and spec.image_pull_policy is PullPolicy.never:
        return Blocked("ImageNotPresent", f"image {spec.image} is not on this host and imagePullPolicy is Never: "
                                          f"load it (docker load / docker pull), or allow pulls")
    security = spec.security
    return ContainerLaunch(
        image=spec.image, image_id=image.id if image else None, image_user=image.user if image else None,
        command=tuple(spec.command) if spec.command else None, args=tuple(spec.args) if spec.args else None,
        env=dict(spec.env) | (uses_env or {}), working_dir=spec.working_dir, user=security.user,
        ports=tuple(PublishedPort(host_ip=port.host_ip, host_port=port.published_port, container_port=port.container_port,
                                  protocol=port.protocol) for port in spec.ports),
        volumes=volumes, network=container_network(spec),
        capabilities=tuple(security.capabilities), read_only_root_filesystem=security.read_only_root_filesystem,
        pids_limit=security.pids_limit, memory_limit=spec.resources.memory, cpus=spec.resources.cpus, gpus=gpus,
        extra_hosts=((HOST_FROM_CONTAINERS, HOST_GATEWAY),) if uses_env else (),
    )


def container_network(spec: WorkloadSpec) -> str:
    return spec.network or ("bridge" if spec.ports else "none")


def check_address(check: HealthCheck, spec: WorkloadSpec) -> tuple[str, int] | None:
    """Where on the host an http/tcp check of a container connects: the published side of the checked port."""
    probe = check.http or check.tcp
    if probe is None:
        return None
    port = probe.port or spec.default_port
    for mapping in spec.ports:
        if mapping.container_port == port and mapping.protocol == "tcp":
            return _WILDCARDS.get(mapping.host_ip, mapping.host_ip), mapping.published_port
    return None


def container_endpoint(spec: WorkloadSpec) -> str | None:
    """A client's URL for the first published tcp port."""
    for mapping in spec.ports:
        if mapping.protocol == "tcp":
            host = _WILDCARDS.get(mapping.host_ip, mapping.host_ip)
            return f"http://{f'[{host}]' if ':' in host else host}:{mapping.published_port}"
    return None
