"""What must not be acted on yet, and the Policy in force meanwhile: a spec rejected or mid-save keeps its last
valid version running; nothing is pruned while the desired state cannot be fully read; a Policy that vanished
for a moment (a checkout, an editor's save) stops nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from reconciler.api.kinds import KINDS, Policy, spec_hash
from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.diff.plan import Hold
from reconciler.load.desired import DesiredEntry, DesiredState

log = logging.getLogger("reconciler")

POLICY_ABSENCE_SECONDS = 10.0


class Holds:
    def __init__(self, records: Callable[[], list[ResourceRecord]], allow_empty: bool) -> None:
        """`records`: a snapshot of every resource's record."""
        self._records = records
        self.allow_empty = allow_empty
        self.writing: frozenset[str] = frozenset()  # spec files mid-save
        self._policy_seen_at: float | None = None

    def of(self, desired: DesiredState, key: ResourceKey, entry: DesiredEntry | None,
           record: ResourceRecord | None) -> Hold | None:
        """Why the desired version of `key` is not to be acted on, if it is not."""
        rejected = desired.rejected.get(key)
        if rejected:
            return Hold("Rejected", f"new version rejected: {rejected[0]}")
        files = {entry.file if entry else None, record.source if record else None} & self.writing
        if files:
            return Hold("BeingWritten", f"{sorted(files)[0]} is being written; it is read once its writer closes it")
        return None

    def prune_block(self, desired: DesiredState, source: str) -> Hold | None:
        """Why a resource missing from the desired state must not be removed yet, if it must not."""
        problem = desired.source_problem(source)
        if problem is not None:
            return Hold("SourceUnreadable", f"its file cannot be read: {problem}")
        elsewhere = desired.unattributed_error()
        if elsewhere is not None:
            return Hold("LoadErrorsElsewhere", f"nothing is removed while a spec fails to load: {elsewhere}")
        if not desired.resources and not self.allow_empty:
            return Hold("DesiredStateEmpty", "the desired state is empty; nothing is pruned without --allow-empty")
        return None

    def policy_in_force(self, desired: DesiredState) -> Policy | None:
        """The valid Policy; if its new version is held (invalid, mid-save, unreadable), the last valid one."""
        if desired.policy is not None:
            return desired.policy
        for record in self._records():
            if record.kind != "Policy":
                continue
            if self.of(desired, record.key, None, record) or self.prune_block(desired, record.source):
                try:
                    return Policy.model_validate(record.resource)
                except ValidationError as error:  # written by a version that allowed what this one refuses
                    log.warning("%s: the last valid version on record no longer validates: %s", record.key, error)
        return None

    def policy_settled(self, desired: DesiredState) -> bool:
        """Whether the policy in force may stop what runs. Not while a Policy that was there is missing but not
        yet gone for POLICY_ABSENCE_SECONDS: a checkout or an editor's save can take it away for a moment."""
        if desired.policy is not None:
            self._policy_seen_at = time.monotonic()
            return True
        recorded = any(record.kind == "Policy" for record in self._records())
        seen = self._policy_seen_at
        return not recorded and (seen is None or time.monotonic() - seen >= POLICY_ABSENCE_SECONDS)


def last_valid(record: ResourceRecord | None) -> DesiredEntry | None:
    """The version a record was last reconciled to, as if it were still the desired one."""
    if record is None:
        return None
    try:
        resource = KINDS[record.kind].model_validate(record.resource)
    except ValidationError as error:  # written by a version that allowed what this one refuses: nothing to keep
        log.warning("%s: the version on record no longer validates: %s", record.key, error)
        return None
    return DesiredEntry(resource, record.source, spec_hash(resource))
