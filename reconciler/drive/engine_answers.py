"""The Docker engine's answers on the reconciler's terms: its refusals as condition reasons, its times on the
reconciler's clock, a container's addresses."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING

from reconciler.drive.protocol import StartFailed
from reconciler.observe import clock

if TYPE_CHECKING:
    import docker.errors
    from docker.models.containers import Container

_REASONS = (  # what the engine says -> a condition reason
    (re.compile(r"port is already allocated|bind: address already in use", re.I), "PortInUse"),
    (re.compile(r"could not select device driver", re.I), "GPURuntimeUnavailable"),
    (re.compile(r"bind source path does not exist", re.I), "VolumeSourceNotFound"),
    (re.compile(r"Conflict\. The container name", re.I), "NameConflict"),
)


def failure_of(error: docker.errors.APIError, fallback: str) -> StartFailed:
    message = str(error.explanation or error)
    reason = next((reason for pattern, reason in _REASONS if pattern.search(message)), fallback)
    return StartFailed(reason, message)


def engine_time(text: str | None, never: datetime) -> datetime:
    """Docker's time on the reconciler's clock; `never` for its zero time."""
    moment = system_time(text)
    return never if moment is None else clock.from_system(moment)


def system_time(text: str | None) -> datetime | None:
    """Docker's RFC 3339 with nanoseconds as the system clock gave it (None for its zero time, '0001-01-01...'):
    to compare with another system-clock time, which moving both onto the reconciler's clock would only blur."""
    if not text or text.startswith("0001-"):
        return None
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00"))


def addresses_of(container: Container) -> tuple[str, ...]:
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return tuple(sorted({address for network in networks.values() if isinstance(network, dict)
                         for address in (network.get("IPAddress"), network.get("GlobalIPv6Address")) if address}))
