"""Warnings for a container told to reach a server at loopback: on its own network namespace (any network but
'host'), 127.0.0.1 and localhost are the container itself, never this host's servers. Pure."""

from __future__ import annotations

import re

from reconciler.api.kinds import Runtime, Workload
from reconciler.diff.containers import container_network
from reconciler.load.desired import DesiredState

_LOOPBACK = re.compile(r"(?<![\w.-])(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(?![\w-])", re.IGNORECASE)


def loopback_env_warnings(desired: DesiredState) -> list[str]:
    warnings = []
    for key, entry in sorted(desired.resources.items()):
        workload = entry.resource
        if not isinstance(workload, Workload) or workload.spec.runtime is not Runtime.container:
            continue
        network = container_network(workload.spec)
        if network in ("host", "none"):
            continue  # host: loopback is this host's; none: nothing is reachable at all
        for name, value in sorted(workload.spec.env.items()):
            found = _LOOPBACK.search(value)
            if found:
                warnings.append(f"{entry.file}: {key}: spec.env.{name} names {found.group(1)}, which on network "
                                f"{network!r} is the container itself, not this host's servers: declare "
                                f"spec.uses: [{{workload: GATEWAY, env: {name}, path: /v1}}] to be given the gateway")
    return warnings
