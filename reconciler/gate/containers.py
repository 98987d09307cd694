"""The gate's judgement of a container: an allowed image, and every relaxation of least privilege allowed. Pure."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from reconciler.api.container import runs_as_root
from reconciler.api.launch import ContainerLaunch
from reconciler.api.policy import PolicySpec
from reconciler.gate.network import listen_problems


def container_problems(launch: ContainerLaunch, policy: PolicySpec, source: str) -> list[tuple[str, str]]:
    """(rule, message) for each thing the policy does not allow; empty when it may run."""
    rules, problems = policy.containers, []
    if not any(image_matches(launch.image, pattern) for pattern in rules.images):
        problems.append(("containers.images", f"image {launch.image} is not allowed by {source}: "
                                              "add it (or a pattern such as 'name:*') to spec.containers.images"))
    if rules.require_digest and "@sha256:" not in launch.image:
        problems.append(("containers.requireDigest", f"image {launch.image} is not pinned by digest and {source} "
                                                     "requires it: write it as name@sha256:<digest>"))
    if launch.pull and not rules.pull:
        problems.append(("containers.pull", f"image {launch.image} is not on this host and {source} does not allow "
                                            "pulls: load it locally, or set spec.containers.pull: true"))
    if launch.network == "host":
        if not rules.host_network:
            problems.append(("containers.hostNetwork", f"network host shares every host port and interface with the "
                                                       f"container; {source} does not allow it"))
    elif launch.network != "none" and launch.network not in rules.networks:
        why = " (publishing ports needs it)" if launch.ports and launch.network == "bridge" else ""
        problems.append(("containers.networks", f"network {launch.network}{why} gives the container outbound access; "
                                                f"{source} does not allow it: add it to spec.containers.networks"))
    extra = sorted(set(launch.capabilities) - set(rules.capabilities))
    if extra:
        problems.append(("containers.capabilities", f"capabilities {', '.join(extra)} are not allowed by {source}"))
    if not launch.read_only_root_filesystem and not rules.writable_root_filesystem:
        problems.append(("containers.writableRootFilesystem", f"a writable root filesystem is not allowed by {source}"))
    if runs_as_root(launch.effective_user) and not rules.root:
        problems.append(("containers.root", f"running as {launch.effective_user} (root: uid or gid 0, a name, or a uid "
                                            f"without a gid, which runs with group 0) is not allowed by {source}: "
                                            "give a numeric uid:gid without 0"))
    roots = [PurePosixPath(root) for root in rules.volume_roots]
    writable = [volume.target for volume in launch.volumes if not volume.read_only]
    if writable and not rules.writable_volumes:
        problems.append(("containers.writableVolumes", f"writable volumes ({', '.join(writable)}) are not allowed by "
                                                       f"{source}: mount them readOnly, or allow writableVolumes"))
    for volume in launch.volumes:
        if not any(PurePosixPath(volume.source).is_relative_to(root) for root in roots):
            allowed = ", ".join(map(str, roots)) or "none"
            problems.append(("containers.volumeRoots", f"volume source {volume.source} lies outside the folders "
                                                       f"{source} allows (spec.containers.volumeRoots: {allowed})"))
    for port in launch.ports:
        problems += listen_problems(port.host_ip, port.host_port, policy.network, source, f"published port {port.host_port}")
    return problems


def image_matches(reference: str, pattern: str) -> bool:
    """Glob over an image reference where '*' and '?' stay within one component ('busybox:*' must not match
    'busybox:5000/evil:1', another registry) and '**' crosses them."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wildcards = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.fullmatch("".join(wildcards.get(part, re.escape(part)) for part in parts), reference) is not None
