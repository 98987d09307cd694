"""Kubernetes condition bookkeeping: a transition time changes only when a condition's status flips."""

from __future__ import annotations

from datetime import datetime

from reconciler.api.status import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition], type_: str, status: ConditionStatus | bool, reason: str, message: str, now: datetime
) -> list[Condition]:
    if isinstance(status, bool):
        status = ConditionStatus.true if status else ConditionStatus.false
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=since)
    return [updated if c.type == type_ else c for c in conditions] if previous else [*conditions, updated]


def condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
