"""The gate's judgement of where a server listens: loopback, or an address and port the policy exposes. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.api.container import is_loopback
from reconciler.api.policy import NetworkPolicy
from reconciler.api.status import Listen, ObservedExposure

RULE = "network.exposed"
LOCAL_CONTAINERS_RULE = "network.localContainers"
PRIVILEGED_RULE = "network.privilegedPorts"
OBSERVED_RULE = "network.observed"  # a socket seen open, judged by the two rules above
FIRST_UNPRIVILEGED_PORT = 1024


def privileged_port_problem(port: int | None, rules: NetworkPolicy, source: str, what: str,
                            verb: str = "would listen") -> str | None:
    """Why listening on a port below 1024 is not allowed, if it is not (on loopback too: a local client trusts it)."""
    if port is None or port >= FIRST_UNPRIVILEGED_PORT or port in rules.privileged_ports:
        return None
    return (f"{what} {verb} on port {port}, below {FIRST_UNPRIVILEGED_PORT}: the system's services live there "
            f"and {source} does not allow it; add {port} to spec.network.privilegedPorts if it is meant")


def listen_problems(address: str, port: int | None, rules: NetworkPolicy, source: str, what: str,
                    verb: str = "would listen") -> list[tuple[str, str]]:
    """(rule, message) for each reason a listener there is not allowed: beyond loopback, or on a system port.
    `verb`: 'would listen' for what a spec declares, 'listens' for what was observed."""
    found = ((RULE, exposure_problem(address, port, rules, source, what, verb)),
             (PRIVILEGED_RULE, privileged_port_problem(port, rules, source, what, verb)))
    return [(rule, message) for rule, message in found if message]


def exposure_problem(address: str, port: int | None, rules: NetworkPolicy, source: str, what: str,
                     verb: str = "would listen") -> str | None:
    """Why listening there is not allowed, if it is not. `what` names the listener ('port 8080', 'the server')."""
    if is_loopback(address):
        return None
    try:
        canonical = str(ipaddress.ip_address(address))
    except ValueError:
        return f"{what} {verb} on {address!r}, which is not an IP address: the policy judges addresses, give one"
    if rules.allows(canonical, port):
        return None
    where = "every interface" if ipaddress.ip_address(canonical).is_unspecified else canonical
    return (f"{what} {verb} on {canonical} ({where}), beyond this host; {source} allows loopback only there: "
            f"add {{address: {canonical!r}, ports: [{port}]}} to spec.network.exposed to expose it")


def local_containers_problem(address: str, rules: NetworkPolicy, source: str) -> str | None:
    """Why a gateway may not also listen on the container bridge's host address, if it may not."""
    if rules.local_containers:
        return None
    return (f"the gateway would also listen on {address}, the host's address on the container bridge, for the "
            f"containers that use it: reachable from local containers, not from the network; {source} does not allow "
            "it: set spec.network.localContainers: true")


MOST_SHOWN = 8  # a process may open thousands of sockets: messages, status and evidence name this many


def at_most(texts: Iterable[object]) -> list[str]:
    """The first MOST_SHOWN of them, then how many more there are."""
    shown = [str(text) for text in texts]
    return shown[:MOST_SHOWN] + ([f"and {len(shown) - MOST_SHOWN} more"] if len(shown) > MOST_SHOWN else [])


@dataclass(frozen=True)
class ListenFindings:
    """What the gate makes of the sockets a running workload was observed listening on."""

    pid: int
    listening: tuple[Listen, ...]
    refused: tuple[tuple[Listen, str], ...] = ()  # what the policy does not allow, and why
    undeclared: tuple[Listen, ...] = ()  # allowed, but not where spec.host/port say it listens
    enforced: bool = True  # the policy stops a workload for them (enforce mode) or only records them (audit)

    @property
    def reasons(self) -> list[str]:
        return at_most(f"{listen}: {message}" for listen, message in self.refused)

    @property
    def refused_listens(self) -> tuple[Listen, ...]:
        """Enough of what was refused to refuse the same launch again (a socket may break two rules)."""
        return tuple(dict.fromkeys(listen for listen, _ in self.refused))[:MOST_SHOWN]


def judge_listens(pid: int, listening: tuple[Listen, ...], declared: tuple[str, int] | None, rules: NetworkPolicy,
                  source: str, enforced: bool, verb: str = "listens", container_host: str | None = None) -> ListenFindings:
    """Each observed socket judged by the same rules as a declared host/port; `declared`: where it was rendered to
    listen (None: nowhere); `container_host`: a gateway's second address, on the container bridge, at the same port
    (judged by network.localContainers, not as an exposure)."""
    on_bridge = (_canonical(container_host), declared[1]) if container_host and declared and rules.local_containers else None
    judged = [listen for listen in listening if (_canonical(listen.address), listen.port) != on_bridge]
    refused = tuple((listen, message) for listen in judged
                    for _, message in listen_problems(listen.address, listen.port, rules, source, f"pid {pid}", verb))
    as_declared = declared and (_canonical(declared[0]), declared[1])
    undeclared = tuple(listen for listen in judged if (_canonical(listen.address), listen.port) != as_declared)
    return ListenFindings(pid, listening, refused, undeclared, enforced)


def observed_problems(exposure: ObservedExposure, rules: NetworkPolicy, source: str) -> list[str]:
    """Why the policy in force refuses what an earlier run of a launch was seen listening on, if it does."""
    return judge_listens(exposure.pid, exposure.listening, None, rules, source, True, "was seen listening").reasons


def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address
