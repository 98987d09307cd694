"""The gate's judgement of where a server listens: loopback, or an address and port the policy exposes. Pure."""

from __future__ import annotations

import ipaddress

from reconciler.api.container import is_loopback
from reconciler.api.policy import NetworkPolicy

RULE = "network.exposed"
PRIVILEGED_RULE = "network.privilegedPorts"
FIRST_UNPRIVILEGED_PORT = 1024


def privileged_port_problem(port: int | None, rules: NetworkPolicy, source: str, what: str) -> str | None:
    """Why listening on a port below 1024 is not allowed, if it is not (on loopback too: a local client trusts it)."""
    if port is None or port >= FIRST_UNPRIVILEGED_PORT or port in rules.privileged_ports:
        return None
    return (f"{what} would listen on port {port}, below {FIRST_UNPRIVILEGED_PORT}: the system's services live there "
            f"and {source} does not allow it; add {port} to spec.network.privilegedPorts if it is meant")


def listen_problems(address: str, port: int | None, rules: NetworkPolicy, source: str, what: str) -> list[tuple[str, str]]:
    """(rule, message) for each reason a listener there is not allowed: beyond loopback, or on a system port."""
    found = ((RULE, exposure_problem(address, port, rules, source, what)),
             (PRIVILEGED_RULE, privileged_port_problem(port, rules, source, what)))
    return [(rule, message) for rule, message in found if message]


def exposure_problem(address: str, port: int | None, rules: NetworkPolicy, source: str, what: str) -> str | None:
    """Why listening there is not allowed, if it is not. `what` names the listener ('port 8080', 'the server')."""
    if is_loopback(address):
        return None
    try:
        canonical = str(ipaddress.ip_address(address))
    except ValueError:
        return f"{what} would listen on {address!r}, which is not an IP address: the policy judges addresses, give one"
    if rules.allows(canonical, port):
        return None
    where = "every interface" if ipaddress.ip_address(canonical).is_unspecified else canonical
    return (f"{what} would listen on {canonical} ({where}), beyond this host; {source} allows loopback only there: "
            f"add {{address: {canonical!r}, ports: [{port}]}} to spec.network.exposed to expose it")
