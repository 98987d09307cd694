"""The staged-update rule as a plain function (progressing, soaking, proven, failed; monotonic time only), and\nhow a person's rollback request is kept until acted on."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from reconciler.api.approval import Answer, Approval
from reconciler.api.kinds import Workload
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.rollout import Instant, KnownGood, RolledBack, RolloutClock
from reconciler.api.status import ResourceStatus, RolloutState
from reconciler.api.lifecycle import UpdateStrategy
from reconciler.control.rollout import Rollouts
from reconciler.diff.rollout import PROGRESS_DEADLINE_EXCEEDED, UNHEALTHY_WHILE_SOAKING, Observed, assess, standing
from reconciler.load.desired import DesiredEntry
from reconciler.record.approvals import ApprovalStore

UPDATE = UpdateStrategy(progress_deadline_seconds=60, soak_seconds=30)
GOOD = KnownGood(generation=1, spec_hash="h1", source="app.yaml", resource={}, proven_at=datetime(2026, 1, 1, tzinfo=timezone.utc))


def at(seconds: float, boot: str = "boot-a") -> Instant:
    return Instant(boot_id=boot, monotonic=1000.0 + seconds)


def seen(ready: bool, spec_hash: str = "h2", message: str = "GET http://127.0.0.1:8099/: 200") -> Observed:
    return Observed(generation=2, spec_hash=spec_hash, ready=ready, message=message)


def test_the_known_good_spec_is_proven_and_needs_no_clock() -> None:
    outcome = assess(None, GOOD, seen(True, spec_hash="h1"), UPDATE, at(0))
    assert (outcome.state, outcome.clock, outcome.look_again) == (RolloutState.proven, None, None)


def test_a_new_generation_progresses_until_ready_then_soaks_then_is_proven() -> None:
    first = assess(None, GOOD, seen(False, message="waiting for the first health check"), UPDATE, at(0))
    assert first.state is RolloutState.progressing and first.look_again == 60
    assert "waiting for the first health check" in first.message
    soaking = assess(first.clock, GOOD, seen(True), UPDATE, at(10))
    assert soaking.state is RolloutState.soaking and soaking.look_again == 30
    still = assess(soaking.clock, GOOD, seen(True), UPDATE, at(39.5))
    assert still.state is RolloutState.soaking and still.look_again == pytest.approx(0.5)
    proven = assess(still.clock, GOOD, seen(True), UPDATE, at(40))
    assert proven.proven and proven.state is RolloutState.proven and proven.clock is None


def test_a_rollouts_message_does_not_count_seconds() -> None:
    """Its status file is rewritten (and synced) whenever its content changes: a message counting the seconds of the
    soak rewrote the file of every soaking workload on every pass."""
    first = assess(None, GOOD, seen(False), UPDATE, at(0))
    waiting = assess(first.clock, GOOD, seen(False), UPDATE, at(7))
    assert waiting.message == first.message == "waiting for Ready (at most 60s): GET http://127.0.0.1:8099/: 200"
    soaking = assess(waiting.clock, GOOD, seen(True), UPDATE, at(10))
    later = assess(soaking.clock, GOOD, seen(True), UPDATE, at(21))
    assert later.message == soaking.message == "Ready; proven once Ready for 30s in a row"
    assert later.look_again == pytest.approx(19)


def test_never_ready_within_the_deadline_fails_once_and_stays_failed() -> None:
    clock = assess(None, GOOD, seen(False), UPDATE, at(0)).clock
    failed = assess(clock, GOOD, seen(False, message="GET /health: connection refused"), UPDATE, at(60))
    assert failed.state is RolloutState.failed and failed.failed_reason == PROGRESS_DEADLINE_EXCEEDED
    assert "not Ready within 60s: GET /health: connection refused" in failed.message
    later = assess(failed.clock, GOOD, seen(True), UPDATE, at(61))  # healthy afterwards: still that failure
    assert later.state is RolloutState.failed and later.failed_reason is None and not later.proven


def test_losing_ready_while_soaking_fails_at_once() -> None:
    clock = assess(None, GOOD, seen(True), UPDATE, at(0)).clock
    failed = assess(clock, GOOD, seen(False, message="process exited with code 3"), UPDATE, at(5))
    assert failed.failed_reason == UNHEALTHY_WHILE_SOAKING and "process exited with code 3" in failed.message


def test_another_spec_starts_a_new_clock() -> None:
    clock = assess(None, GOOD, seen(False), UPDATE, at(0)).clock
    other = assess(clock, GOOD, seen(False, spec_hash="h3"), UPDATE, at(59))
    assert other.clock is not None and other.clock.spec_hash == "h3" and other.look_again == 60


def test_a_reboot_restarts_the_deadline_since_monotonic_readings_do_not_compare_across_boots() -> None:
    clock = assess(None, GOOD, seen(False), UPDATE, at(0)).clock
    after_reboot = assess(clock, GOOD, seen(False), UPDATE, Instant(boot_id="boot-b", monotonic=5.0))
    assert after_reboot.state is RolloutState.progressing and after_reboot.look_again == 60


def test_a_first_version_without_known_good_is_judged_too() -> None:
    clock = assess(None, None, seen(False), UPDATE, at(0)).clock
    assert assess(clock, None, seen(False), UPDATE, at(61)).failed_reason == PROGRESS_DEADLINE_EXCEEDED


def test_a_zero_soak_proves_on_the_first_ready_pass() -> None:
    assert assess(None, GOOD, seen(True), UpdateStrategy(soak_seconds=0), at(0)).proven


def test_a_read_only_status_shows_the_rollout_as_last_judged_without_reading_a_clock() -> None:
    clock = RolloutClock(generation=2, spec_hash="h2", started=at(0))
    assert standing(clock, GOOD, None, "h2")[1:] == (RolloutState.progressing, "not Ready yet; its progress deadline is running")
    soaking = clock.model_copy(update={"ready_since": at(5)})
    assert standing(soaking, GOOD, None, "h2")[1] is RolloutState.soaking
    failed = soaking.model_copy(update={"failure": "UnhealthyWhileSoaking: lost Ready"})
    assert standing(failed, GOOD, None, "h2") == (2, RolloutState.failed, "UnhealthyWhileSoaking: lost Ready")
    rolled = RolledBack(generation=2, spec_hash="h2", reason="x", message="not Ready within 3s", at=GOOD.proven_at)
    assert standing(None, GOOD, rolled, "h2") == (2, RolloutState.rolled_back,
                                                  "generation 2 was rolled back by the reconciler: not Ready within 3s")
    assert standing(None, GOOD, None, "h1")[1] is RolloutState.proven
    assert standing(clock, GOOD, None, "h3") is None  # a spec not judged yet: nothing to say


def test_a_rollback_request_stays_until_the_pass_that_finds_the_rollback_saved(tmp_path: Path) -> None:
    approvals = ApprovalStore(tmp_path)
    rollouts = Rollouts(approvals, lambda file, line: None, lambda name: None, "boot-a")
    workload = Workload.model_validate({"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload",
                                        "metadata": {"name": "app"}, "spec": {"command": ["/bin/true"]}})
    entry = DesiredEntry(workload, "app.yaml", "h2")
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    record = ResourceRecord(kind="Workload", name="app", source="app.yaml", generation=2, spec_hash="h2",
                            resource={}, created_at=now, known_good=GOOD)
    approvals.request_rollback(Approval(name="app", spec_hash="h2", answer=Answer.approve, by="ada", at=now))
    status = ResourceStatus(kind="Workload", name="app", generation=2, phase="Running")

    rolled, _, _ = rollouts.after_pass(entry, record, status, None, False, now)
    assert rolled.rolled_back is not None and rolled.rolled_back.by == "ada" and rolled.spec_hash == "h1"
    assert approvals.rollback_request("app") is not None  # a kill before the record is saved loses nothing
    held = Rollouts.hold(rolled, entry)
    assert held is not None
    rollouts.after_pass(entry, rolled, status, held, False, now)
    assert approvals.rollback_request("app") is None
