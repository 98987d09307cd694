"""Staged updates: the version of a workload last proven healthy, the clock of the one being proven, and a
generation that was rolled back. Kept in the state directory with each resource's record; reported in status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reconciler.api.status import Report


class Pins(Report):
    """What the known-good version ran beyond its spec: a restore runs these same bytes, or refuses to say it
    restored the known-good version (an executable upgraded since, an image tag moved, a Model changed)."""

    executable: str | None = None
    executable_sha256: str | None = None
    image_id: str | None = None
    model_sha256: str | None = None


class KnownGood(Report):
    """The last version that became Ready and stayed healthy for its soak period: what a rollback restores."""

    generation: int
    spec_hash: str
    source: str
    resource: dict[str, Any]
    proven_at: datetime
    pins: Pins = Pins()  # records written before pins were kept have none: the spec alone is restored


class Instant(Report):
    """A point on the monotonic clock, which a wall-clock jump cannot move; it only means something within the
    boot it was read in."""

    boot_id: str
    monotonic: float


class RolloutClock(Report):
    """The generation being proven: when it began and since when it is Ready; `failure` once it has failed."""

    generation: int
    spec_hash: str
    started: Instant
    ready_since: Instant | None = None
    failure: str | None = None  # why it failed: fixed once, so a later healthy moment does not undo it


class RolledBack(Report):
    """A generation that failed and is not retried until the spec changes again."""

    generation: int
    spec_hash: str
    reason: str
    message: str
    at: datetime
    by: str = "the reconciler"  # or the person who ran `reconciler rollback`
