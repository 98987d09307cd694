"""What one reconcile asks of the work queue (controller-runtime's reconcile.Result).

Three outcomes, never confused: look again after T (a back-off, a probe, a deadline, a download's progress);
nothing to do until an event (an edit, an answer, an exit, the policy, the host, the resync) — a stable state,
whether it runs, ended, or was refused; and failed, which a reconcile says by raising: the work queue retries
it with its per-key back-off. A float where 0 meant "now" and None "never" made a refused start look due at
once, a thousand times a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None  # seconds; None: only an event brings it back

    def __post_init__(self) -> None:
        if self.requeue_after is not None and not (math.isfinite(self.requeue_after) and self.requeue_after >= 0):
            raise ValueError(f"requeue_after must be a finite number of seconds, not {self.requeue_after!r}")

    @classmethod
    def after(cls, seconds: float) -> Result:
        """Look again once `seconds` have passed; 0 (due already) is as soon as the work queue's pace allows."""
        return cls(max(0.0, seconds))

    @classmethod
    def until_event(cls) -> Result:
        return cls()

    @classmethod
    def soonest(cls, *looks: float | None) -> Result:
        """The earliest of several due times (seconds, None for none)."""
        due = [seconds for seconds in looks if seconds is not None]
        return cls.after(min(due)) if due else cls.until_event()
