"""Where models may be fetched from: the Policy's `models.sources` and `models.internalNetworks`, judged against a
host and the addresses it resolved to. Pure: the resolution happens in the connection that then connects to the
very addresses judged here, so a name that resolves anew (DNS rebinding) cannot lead elsewhere."""

from __future__ import annotations

import ipaddress
import re

from reconciler.api.policy import ModelPolicy

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def source_refusal(host: str, port: int, addresses: list[str], rules: ModelPolicy) -> str | None:
    """Why a model may not be fetched from `host`:`port` at `addresses`; None when it may."""
    name = host.lower().rstrip(".")
    if rules.sources and not any(_host_matches(pattern, name, port) for pattern in rules.sources):
        return (f"{name}:{port} is not among the hosts models may be fetched from (Policy spec.models.sources: "
                f"{', '.join(rules.sources)})")
    if not addresses:
        return f"{name} resolved to no address"
    networks = [ipaddress.ip_network(network) for network in rules.internal_networks]
    for text in addresses:
        address = _plain(ipaddress.ip_address(text.partition("%")[0]))
        if not address.is_global and not any(address in network for network in networks):
            return (f"{name} resolves to {address}, a non-public address (loopback, private, link-local or "
                    "reserved): list its network in spec.models.internalNetworks of the Policy to fetch from it")
    return None


def _plain(address: Address) -> Address:
    """An IPv4 address written as IPv6 (::ffff:127.0.0.1) is judged as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_matches(pattern: str, host: str, port: int) -> bool:
    pattern_host, _, pattern_port = pattern.rpartition(":") if _has_port(pattern) else (pattern, "", "")
    if pattern_port and pattern_port != str(port):
        return False
    pattern_host = pattern_host.removeprefix("[").removesuffix("]")  # [::1]:8080: the address as resolved
    expression = ".".join("[^.]*".join(map(re.escape, label.split("*"))) for label in pattern_host.split("."))
    return re.fullmatch(expression, host) is not None


def _has_port(pattern: str) -> bool:
    host, colon, port = pattern.rpartition(":")
    return bool(colon) and port.isdigit() and not host.endswith(":")  # not the end of a bare IPv6 address
