"""Staged updates in the loop: which version a workload runs while a generation of it is rolled back, and after
each pass whether the generation in force is proven, still being proven, or failed (then, with rollback Auto or
on a person's request, the known-good version is restored and the failed one is not retried until the spec
changes again: no flapping between versions)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.api.kinds import Workload
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.rollout import Instant, KnownGood, Pins, RolledBack
from reconciler.api.status import Placement, ResourceStatus, RolloutState, RolloutStatus
from reconciler.api.lifecycle import RollbackMode
from reconciler.diff.health import NOT_READY
from reconciler.diff.plan import Hold
from reconciler.diff.rollout import ROLLED_BACK, Assessment, Observed, assess, standing
from reconciler.drive.logs import tail
from reconciler.load.desired import DesiredEntry
from reconciler.record.approvals import ApprovalStore

log = logging.getLogger("reconciler")

LOG_LINES_KEPT = 20  # of a failed generation's log, in its evidence
_NOT_ITS_FAULT = frozenset({"Blocked", "Denied", "PendingApproval"})


class Rollouts:
    def __init__(self, approvals: ApprovalStore, evidence: Callable[[str, dict[str, Any]], object],
                 log_file: Callable[[str], str | None], boot_id: str,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.approvals = approvals
        self._evidence = evidence
        self._log_file = log_file
        self._boot_id = boot_id
        self._monotonic = monotonic

    @staticmethod
    def hold(record: ResourceRecord | None, entry: DesiredEntry | None) -> Hold | None:
        """While the desired spec is a rolled-back generation, the version on record (the known-good one, since
        the rollback) is reconciled instead, as for any held spec."""
        if record is None or entry is None or record.rolled_back is None or record.known_good is None:
            return None
        rolled, good = record.rolled_back, record.known_good
        if entry.spec_hash != rolled.spec_hash:
            return None  # the spec changed since: it is tried
        return Hold(ROLLED_BACK, f"generation {rolled.generation} was rolled back by {rolled.by}: {rolled.message}; "
                                 f"the known-good generation {good.generation} runs instead until the spec changes")

    @staticmethod
    def restoring(record: ResourceRecord | None) -> Pins | None:
        """What a held version on record must run when it is the known-good one standing in for a rolled-back
        generation: the bytes it was proven with."""
        if record is None or record.rolled_back is None or record.known_good is None:
            return None
        return record.known_good.pins if record.spec_hash == record.known_good.spec_hash else None

    def after_pass(self, desired: DesiredEntry | None, record: ResourceRecord, status: ResourceStatus, held: Hold | None,
                   waiting_for_person: bool, now: datetime,
                   pins: Callable[[], Pins] = Pins) -> tuple[ResourceRecord, ResourceStatus, float | None]:
        """Judge the generation in force; returns the record and status to keep, and when to look again.
        `pins`: what the generation in force runs, asked for once it is proven."""
        if desired is None or not isinstance(desired.resource, Workload):
            return record, status, None
        workload = desired.resource
        update = workload.spec.update
        if held is not None:
            if held.reason == ROLLED_BACK and record.rolled_back is not None:
                self.approvals.clear_rollback(workload.name)  # a request it answered: cleared once the record is saved
                shown = self._shown(record, record.rolled_back.generation, RolloutState.rolled_back, held.message,
                                    update.rollback)
                return record, status.model_copy(update={"rollout": shown}), None
            return record, status, None  # a file mid-save or rejected: nothing about the rollout changes
        if record.rolled_back is not None and record.rolled_back.spec_hash != desired.spec_hash:
            record = record.model_copy(update={"rolled_back": None})  # the spec changed: the new one is tried
        request = self.approvals.rollback_request(workload.name)
        if request is not None:
            if request.covers(desired.spec_hash) and record.known_good is not None:
                # the request stays until the pass that finds the rollback saved (a kill in between loses nothing)
                record = self._roll_back(record, "RollbackRequested", "a person asked for the known-good version",
                                         request.by, now)
                return record, status, None  # restored by the pass that follows at once (Reconciler.reconcile)
            self.approvals.clear_rollback(workload.name)  # for a spec since replaced, or nothing to restore
        if waiting_for_person or status.placement is Placement.hosted or status.phase in _NOT_ITS_FAULT:
            # Not started (an approval awaited, a missing capability, a refusal, a model still downloading: the
            # version before keeps running meanwhile) or not run here: its deadline starts once it can start.
            return record.model_copy(update={"rollout": None}), status, None
        # live counts: a readiness check that fails (its backend is down) is not this version's failure
        serving = status.pid is not None and any(c.type == "Ready" and (c.status.value == "True" or c.reason == NOT_READY)
                                                 for c in status.conditions)
        ready = serving or status.phase == "Succeeded"  # a run-to-completion workload proves itself by completing
        observed = Observed(record.generation, desired.spec_hash, ready, status.message)
        outcome = assess(record.rollout, record.known_good, observed, update,
                         Instant(boot_id=self._boot_id, monotonic=self._monotonic()))
        record = record.model_copy(update={"rollout": outcome.clock})
        if outcome.proven:
            good = KnownGood(generation=record.generation, spec_hash=desired.spec_hash, source=desired.file,
                             resource=workload.model_dump(mode="json", by_alias=True), proven_at=now, pins=pins())
            record = record.model_copy(update={"known_good": good})
            self._evidence(desired.file, _line(record, now, "proven", outcome.message))
        elif outcome.failed_reason is not None:
            self._evidence(desired.file, self._failure_line(record, status, outcome, now))
            if update.rollback is RollbackMode.auto and record.known_good is not None:
                record = self._roll_back(record, outcome.failed_reason, outcome.message, "the reconciler", now)
                return record, status, None
        shown = self._shown(record, record.generation, outcome.state, outcome.message, update.rollback)
        return record, status.model_copy(update={"rollout": shown}), outcome.look_again

    def on_record(self, desired: DesiredEntry | None, record: ResourceRecord | None) -> RolloutStatus | None:
        """The rollout as last judged, for a read-only `status` or `describe` (which must not run the clock)."""
        if desired is None or record is None or not isinstance(desired.resource, Workload):
            return None
        found = standing(record.rollout, record.known_good, record.rolled_back, desired.spec_hash)
        if found is None:
            return None
        generation, state, message = found
        return self._shown(record, generation, state, message, desired.resource.spec.update.rollback)

    def _roll_back(self, record: ResourceRecord, reason: str, message: str, by: str, now: datetime) -> ResourceRecord:
        """The record now describes the known-good version (so plans compare against it); the generation number
        stays the latest asked for, and the failed spec is remembered so it is not tried again."""
        good = record.known_good
        assert good is not None
        rolled = RolledBack(generation=record.generation, spec_hash=record.spec_hash, reason=reason, message=message,
                            at=now, by=by)
        log.warning("%s: generation %d rolled back to the known-good generation %d: %s", record.key,
                    record.generation, good.generation, message)
        self._evidence(record.source, _line(record, now, "rolled-back", message) | {
            "reason": reason, "by": by, "restores": {"generation": good.generation, "specHash": good.spec_hash}})
        return record.model_copy(update={"rolled_back": rolled, "rollout": None, "spec_hash": good.spec_hash,
                                         "resource": good.resource, "source": good.source,
                                         # the failed version's back-off is not the restored one's
                                         "consecutive_failures": 0, "next_retry_at": None, "last_failure": None})

    def _failure_line(self, record: ResourceRecord, status: ResourceStatus, outcome: Assessment, now: datetime) -> dict[str, Any]:
        line = _line(record, now, "failed", outcome.message) | {"reason": outcome.failed_reason}
        if status.health is not None:
            line["health"] = status.health
        if record.last_exit is not None:
            line["lastExit"] = record.last_exit.model_dump(mode="json", by_alias=True, exclude_none=True)
        log_file = self._log_file(record.name)
        if log_file is not None:
            line["logTail"] = tail(Path(log_file), LOG_LINES_KEPT)
        return line

    def _shown(self, record: ResourceRecord, generation: int, state: RolloutState, message: str,
               rollback: RollbackMode) -> RolloutStatus:
        good = record.known_good
        if state is RolloutState.failed and good is not None and rollback is RollbackMode.manual:
            message += f"; `reconciler rollback {record.name}` restores the known-good generation {good.generation}"
        elif state is RolloutState.failed and good is None:
            message += "; there is no known-good version to restore"
        return RolloutStatus(generation=generation, state=state, message=message, rollback=rollback.value,
                             known_good_generation=good.generation if good else None,
                             known_good_spec_hash=good.spec_hash if good else None)


def _line(record: ResourceRecord, now: datetime, outcome: str, message: str) -> dict[str, Any]:
    return {"time": now.isoformat(), "resource": str(record.key), "generation": record.generation,
            "event": "rollout", "outcome": outcome, "specHash": record.spec_hash, "message": message}
