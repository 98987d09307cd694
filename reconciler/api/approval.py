"""A person's answer to a change that waits for one: it covers one exact spec, by its hash."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from reconciler.api.status import Report


class Answer(str, Enum):
    approve = "approve"
    deny = "deny"

    @property
    def past(self) -> str:
        return {"approve": "approved", "deny": "denied"}[self.value]


class Approval(Report):
    name: str  # the Workload's
    spec_hash: str
    answer: Answer
    by: str
    at: datetime
    hosted: bool = False  # consent to its hosted fallback, not approval of a local start

    def covers(self, spec_hash: str | None) -> bool:
        return spec_hash is not None and self.spec_hash == spec_hash

    def describe(self) -> str:
        return f"{self.answer.past} by {self.by} at {self.at.isoformat(timespec='seconds')}"
