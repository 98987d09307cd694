"""Diff: (desired, remembered, observed, now) -> one action with its cause. Pure: no processes, no clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any

import pytest

from reconciler.api.kinds import Model, Policy, Workload, spec_hash
from reconciler.api.launch import LaunchSpec, render_launch, working_dir_for
from reconciler.api.meta import API_VERSION, PRUNE_ANNOTATION, Resource, ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.status import ExitInfo, FailureInfo
from reconciler.diff.engines import Blocked
from reconciler.diff.plan import (
    Action, Hold, Inputs, Verb, next_generation, note_observations, plan_resource, restarts, schedule_retry,
)
from reconciler.load.desired import DesiredEntry
from reconciler.observe.processes import ProcessObservation, ProcessRecord, ProcessState

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
SPEC_DIR = PurePosixPath("/srv/desired-state")
WORK_DIR = PurePosixPath("/var/lib/reconciler/work/web")  # where a workload without spec.workingDir runs
PYTHON3 = "/usr/bin/python3"  # where command[0] resolves
WEB = ResourceKey("Workload", "web")
ABSENT = ProcessObservation(ProcessState.absent)


def workload(name: str = "web", labels: dict[str, str] | None = None, **spec: Any) -> Workload:
    return Workload.model_validate({
        "apiVersion": API_VERSION, "kind": "Workload",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"command": ["python3", "-m", "http.server"], **spec},
    })


def model(source: str = "models/tiny.gguf") -> Model:
    return Model.model_validate({"apiVersion": API_VERSION, "kind": "Model", "metadata": {"name": "tiny"}, "spec": {"source": source}})


def policy(*executables: str) -> Policy:
    trusted = [{"executable": executable} for executable in executables]
    return Policy.model_validate({
        "apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": "workstation"},
        "spec": {"native": {"trustedExecutables": trusted}},
    })


def entry(resource: Resource, file: str = "web.yaml") -> DesiredEntry:
    return DesiredEntry(resource, file, spec_hash(resource))


def remembered(resource: Resource, generation: int = 1, **fields: Any) -> ResourceRecord:
    """What the reconciler stored after applying `resource` as `generation`."""
    return ResourceRecord(
        kind=resource.kind, name=resource.name, source="web.yaml", generation=generation,
        spec_hash=spec_hash(resource), resource=resource.model_dump(mode="json", by_alias=True),
        created_at=NOW - timedelta(hours=1), **fields,
    )


def launch_of(resource: Workload, executable: str | None = PYTHON3) -> LaunchSpec:
    return render_launch(resource.spec, tuple(resource.spec.command or ()), tuple(resource.spec.args), working_dir_for(resource.spec, SPEC_DIR, WORK_DIR), executable)


def process(resource: Workload, pid: int = 4242, generation: int = 1, exit: ExitInfo | None = None,
            executable: str | None = PYTHON3) -> ProcessRecord:
    return ProcessRecord(
        name=resource.name, pid=pid, start_ticks=123_456, nonce="3f2a9c", launch=launch_of(resource, executable),
        generation=generation, started_at=NOW - timedelta(minutes=5), exit=exit,
    )


def running(resource: Workload, **fields: Any) -> ProcessObservation:
    return ProcessObservation(ProcessState.running, process(resource, **fields))


def failure(message: str = "executable not found: /opt/missing") -> FailureInfo:
    return FailureInfo(reason="ExecutableNotFound", message=message, at=NOW - timedelta(seconds=1))


def ended(code: int | None = 1, pid: int = 4242, ran_seconds: float = 3.0, signal: int | None = None,
          finished_at: datetime = NOW - timedelta(seconds=1)) -> ExitInfo:
    return ExitInfo(pid=pid, code=code, signal=signal, finished_at=finished_at, ran_seconds=ran_seconds)


def exited(resource: Workload, exit_info: ExitInfo | None = None) -> ProcessObservation:
    exit_info = exit_info or ended()
    return ProcessObservation(ProcessState.exited, process(resource, pid=exit_info.pid, exit=exit_info))


def plan_workload(desired: Workload, record: ResourceRecord | None, observed: ProcessObservation,
                  now: datetime = NOW, executable: str | None = PYTHON3, **inputs: Any) -> Action:
    return plan_resource(Inputs(WEB, entry(desired), record, observed, launch_of(desired, executable), **inputs), now)


def plan_removal(record: ResourceRecord | None, **inputs: Any) -> Action:
    return plan_resource(Inputs(WEB, None, record, **inputs), NOW)


def note(record: ResourceRecord, exit_info: ExitInfo | None, resource: Workload, generation: int | None = None) -> ResourceRecord:
    """note_observations for the record's own generation unless told otherwise."""
    return note_observations(record, record.generation if generation is None else generation, exit_info, resource)


# -- workloads: create, keep, recreate, update ----------------------------------------------------


def test_new_workload_is_created() -> None:
    web = workload()
    action = plan_workload(web, None, ABSENT)
    assert (action.verb, action.cause, action.generation) == (Verb.create, "not running", 1)
    assert action.launch == launch_of(web)
    assert action.changes_something
    assert action.hold is None


def test_running_with_the_same_launch_needs_nothing() -> None:
    web = workload()
    action = plan_workload(web, remembered(web), running(web))
    assert (action.verb, action.cause, action.generation) == (Verb.none, "running", 1)
    assert action.launch is None and not action.changes_something


def test_changed_args_recreate_naming_spec_args() -> None:
    old, new = workload(), workload(args=["--bind", "127.0.0.1"])
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause, action.generation) == (Verb.recreate, "spec.args changed", 2)
    assert action.launch == launch_of(new)


def test_changed_command_recreates_naming_spec_command() -> None:
    old, new = workload(), workload(command=["python3", "-m", "http.server", "8081"])
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause, action.generation) == (Verb.recreate, "spec.command changed", 2)
    assert action.launch is not None and action.launch.command == ("python3", "-m", "http.server", "8081")


def test_moving_words_between_command_and_args_names_both() -> None:
    old = workload()
    new = workload(command=["python3"], args=["-m", "http.server"])
    assert launch_of(old).argv == launch_of(new).argv  # the same command line, split differently
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause) == (Verb.recreate, "spec.args, spec.command changed")


def test_executable_that_resolves_elsewhere_recreates_at_the_same_generation() -> None:
    web = workload()
    action = plan_workload(web, remembered(web), running(web, executable="/usr/bin/python3"),
                           executable="/home/me/.local/bin/python3")
    assert (action.verb, action.cause) == (Verb.recreate, "the executable command[0] resolves to changed")
    assert action.generation == 1  # the spec is unchanged
    assert action.launch is not None and action.launch.executable == "/home/me/.local/bin/python3"


def test_changed_env_recreates_naming_spec_env() -> None:
    old, new = workload(env={"PORT": "8080"}), workload(env={"PORT": "9090"})
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause) == (Verb.recreate, "spec.env.PORT changed")


def test_changed_working_dir_recreates_naming_spec_working_dir() -> None:
    old, new = workload(), workload(workingDir="data")
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause) == (Verb.recreate, "spec.workingDir changed")


def test_changed_memory_limit_recreates_naming_spec_resources_memory() -> None:
    old, new = workload(), workload(resources={"memory": "1Gi"})
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause) == (Verb.recreate, "spec.resources.memory changed")
    assert action.launch is not None and action.launch.memory_limit == 2**30


def test_spec_change_outside_the_launch_is_an_update() -> None:
    old, new = workload(), workload(restart={"policy": "OnFailure"})
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause, action.generation) == (Verb.update, "spec.restart.policy changed", 2)
    assert action.launch is None


# -- rendering the launch ------------------------------------------------------------------------


def test_launch_keeps_command_and_args_apart() -> None:
    spec = workload(args=["8080"]).spec
    launch = render_launch(spec, tuple(spec.command or ()), tuple(spec.args), "/srv/run", "/usr/bin/python3")
    assert (launch.command, launch.args) == (("python3", "-m", "http.server"), ("8080",))
    assert launch.argv == ("python3", "-m", "http.server", "8080")
    assert (launch.executable, launch.working_dir) == ("/usr/bin/python3", "/srv/run")


def test_relative_working_dir_is_taken_from_the_spec_folder() -> None:
    assert working_dir_for(workload(workingDir="data").spec, SPEC_DIR, WORK_DIR) == "/srv/desired-state/data"
    assert launch_of(workload(workingDir="data")).working_dir == "/srv/desired-state/data"


def test_absolute_working_dir_is_kept() -> None:
    assert working_dir_for(workload(workingDir="/opt/app").spec, SPEC_DIR, WORK_DIR) == "/opt/app"


def test_without_a_working_dir_the_default_folder_is_used() -> None:
    assert working_dir_for(workload().spec, SPEC_DIR, WORK_DIR) == str(WORK_DIR)


def test_the_digest_covers_the_executable() -> None:
    web = workload()
    assert launch_of(web, "/usr/bin/python3").digest != launch_of(web, "/opt/python3").digest
    assert launch_of(web).digest == launch_of(workload()).digest


# -- workloads: exits, restart policy and back-off ---------------------------------------------


def test_failed_exit_waits_out_the_back_off() -> None:
    web = workload()
    retry_at = NOW + timedelta(seconds=4)
    action = plan_workload(web, remembered(web, next_retry_at=retry_at, consecutive_failures=3), exited(web))
    assert action.verb is Verb.none
    assert action.cause == "back-off: process exited with code 1; next start at 12:00:04 UTC"
    assert action.retry_at == retry_at
    assert action.launch is None


def test_failed_exit_restarts_once_the_back_off_expired() -> None:
    web = workload()
    record = remembered(web, next_retry_at=NOW + timedelta(seconds=4))
    action = plan_workload(web, record, exited(web), now=NOW + timedelta(seconds=5))
    assert (action.verb, action.cause, action.generation) == (Verb.create, "process exited with code 1", 1)
    assert action.launch == launch_of(web)


def test_restart_happens_exactly_at_the_retry_time() -> None:
    web = workload()
    action = plan_workload(web, remembered(web, next_retry_at=NOW), exited(web))
    assert action.verb is Verb.create


def test_killed_process_cause_names_the_signal() -> None:
    web = workload()
    action = plan_workload(web, remembered(web), exited(web, ended(code=None, signal=9)))
    assert (action.verb, action.cause) == (Verb.create, "process was killed by signal 9")


def test_on_failure_does_not_restart_a_clean_exit() -> None:
    web = workload(restart={"policy": "OnFailure"})
    action = plan_workload(web, remembered(web), exited(web, ended(code=0)))
    assert (action.verb, action.cause) == (
        Verb.none, "process exited with code 0; restart policy OnFailure does not restart it"
    )


def test_on_failure_restarts_a_failed_exit() -> None:
    web = workload(restart={"policy": "OnFailure"})
    action = plan_workload(web, remembered(web), exited(web, ended(code=2)))
    assert (action.verb, action.cause) == (Verb.create, "process exited with code 2")


def test_on_failure_restarts_a_process_killed_by_a_signal() -> None:
    web = workload(restart={"policy": "OnFailure"})
    action = plan_workload(web, remembered(web), exited(web, ended(code=None, signal=15)))
    assert (action.verb, action.cause) == (Verb.create, "process was killed by signal 15")


def test_on_failure_does_not_restart_an_exit_of_unknown_code() -> None:
    web = workload(restart={"policy": "OnFailure"})
    action = plan_workload(web, remembered(web), exited(web, ended(code=None)))
    assert action.verb is Verb.none and action.launch is None
    assert action.cause == (
        "process exited (exit code unknown: it ended while no reconciler was its parent); "
        "restart policy OnFailure does not restart it"
    )


def test_always_restarts_an_exit_of_unknown_code() -> None:
    web = workload()
    action = plan_workload(web, remembered(web), exited(web, ended(code=None)))
    assert action.verb is Verb.create
    assert action.cause.startswith("process exited (exit code unknown")


def test_never_does_not_restart_even_a_failure() -> None:
    web = workload(restart={"policy": "Never"})
    action = plan_workload(web, remembered(web), exited(web, ended(code=1)))
    assert (action.verb, action.cause) == (Verb.none, "process exited with code 1; restart policy Never does not restart it")


@pytest.mark.parametrize(
    ("code", "signal", "failed"),
    [(0, None, False), (1, None, True), (None, 9, True), (0, 9, True), (None, None, None)],
    ids=["clean", "failed", "signal", "signal-wins", "unknown"],
)
def test_exit_failed_is_true_false_or_unknown(code: int | None, signal: int | None, failed: bool | None) -> None:
    assert ended(code=code, signal=signal).failed is failed


@pytest.mark.parametrize(
    ("policy_name", "code", "signal", "restarted"),
    [
        ("Always", 0, None, True), ("Always", 1, None, True), ("Always", None, None, True),
        ("OnFailure", 0, None, False), ("OnFailure", 1, None, True), ("OnFailure", None, 9, True),
        ("OnFailure", None, None, False),
        ("Never", 0, None, False), ("Never", 1, None, False), ("Never", None, 9, False),
    ],
)
def test_restarts_by_policy(policy_name: str, code: int | None, signal: int | None, restarted: bool) -> None:
    assert restarts(workload(restart={"policy": policy_name}), ended(code=code, signal=signal)) is restarted


def test_exited_with_a_changed_launch_starts_at_once() -> None:
    old, new = workload(), workload(args=["8081"])
    record = remembered(old, next_retry_at=NOW + timedelta(minutes=5))
    action = plan_workload(new, record, exited(old))
    assert action.verb is Verb.create
    assert action.cause == "spec.args changed; the old process had ended"
    assert (action.generation, action.retry_at) == (2, None)
    assert action.launch == launch_of(new)


def test_exited_whose_executable_resolves_elsewhere_starts_at_once() -> None:
    web = workload(restart={"policy": "Never"})
    action = plan_workload(web, remembered(web), exited(web), executable="/opt/python3")
    assert (action.verb, action.cause) == (
        Verb.create, "the executable command[0] resolves to changed; the old process had ended"
    )


def test_exited_with_a_changed_spec_outside_the_launch_skips_the_back_off() -> None:
    old, new = workload(), workload(restart={"backoff": {"initialSeconds": 2}})
    record = remembered(old, next_retry_at=NOW + timedelta(minutes=5))
    action = plan_workload(new, record, exited(old))
    assert (action.verb, action.generation) == (Verb.create, 2)


def test_failed_start_waits_out_the_back_off_naming_the_failure() -> None:
    web = workload()
    retry_at = NOW + timedelta(seconds=3)
    record = remembered(web, next_retry_at=retry_at, consecutive_failures=1,
                        last_failure=failure("executable not found: /opt/missing"))
    action = plan_workload(web, record, ABSENT)
    assert (action.verb, action.launch, action.retry_at) == (Verb.none, None, retry_at)
    assert action.cause.startswith("back-off: ")
    assert "executable not found: /opt/missing" in action.cause
    assert action.cause == "back-off: executable not found: /opt/missing; next start at 12:00:03 UTC"


def test_failed_start_is_retried_after_the_back_off() -> None:
    web = workload()
    record = remembered(web, next_retry_at=NOW - timedelta(seconds=1), last_failure=failure())
    action = plan_workload(web, record, ABSENT)
    assert (action.verb, action.cause) == (Verb.create, "not running")


def test_failed_start_is_retried_at_once_when_the_spec_changed() -> None:
    old, new = workload(command=["/opt/missing"]), workload()
    record = remembered(old, next_retry_at=NOW + timedelta(minutes=5), last_failure=failure())
    action = plan_workload(new, record, ABSENT)
    assert (action.verb, action.cause, action.generation) == (Verb.create, "not running", 2)


# -- holds: the new version is not used; the last valid one keeps being reconciled -------------------
# The reconciler passes the last valid version as `desired` together with the hold (see Inputs.hold).


REJECTED = Hold("Rejected", "new version rejected: web.yaml:6:3 spec.command: expected a valid list, got 'python3'")
BEING_WRITTEN = Hold("BeingWritten", "web.yaml is being written; it is read once its writer closes it")
EMPTY = Hold("DesiredStateEmpty", "the desired state is empty; nothing is pruned without --allow-empty")


def test_a_rejected_new_version_leaves_the_running_generation_in_force() -> None:
    web = workload()
    action = plan_workload(web, remembered(web, generation=3), running(web, generation=3), hold=REJECTED)
    assert (action.verb, action.generation, action.hold) == (Verb.none, 3, REJECTED)
    assert action.cause == f"running ({REJECTED.message}; generation 3 stays in force)"
    assert not action.changes_something


def test_a_held_version_that_crashed_is_restarted_unchanged() -> None:
    web = workload()
    action = plan_workload(web, remembered(web), exited(web), hold=BEING_WRITTEN, now=NOW + timedelta(hours=1))
    assert (action.verb, action.hold, action.launch) == (Verb.create, BEING_WRITTEN, launch_of(web))
    assert action.cause.startswith("process exited with code 1 (web.yaml is being written")


def test_a_blocked_prune_keeps_the_resource_reconciled() -> None:
    web = workload()
    action = plan_workload(web, remembered(web, generation=2), running(web, generation=2), hold=EMPTY)
    assert (action.verb, action.hold, action.generation) == (Verb.none, EMPTY, 2)
    assert action.cause == f"running ({EMPTY.message}; generation 2 stays in force)"


def test_a_hold_without_a_record_starts_nothing() -> None:
    action = plan_workload(workload(), None, ABSENT, hold=BEING_WRITTEN)
    assert (action.verb, action.generation, action.launch, action.hold) == (Verb.none, None, None, BEING_WRITTEN)
    assert action.cause == BEING_WRITTEN.message


def test_a_hold_with_no_version_to_keep_changes_nothing() -> None:
    action = plan_removal(remembered(workload(), generation=3), hold=REJECTED)
    assert (action.verb, action.generation, action.hold, action.launch) == (Verb.none, 3, REJECTED, None)
    assert action.cause == f"{REJECTED.message}; generation 3 stays in force"


def test_a_hold_applies_to_models_and_policies_too() -> None:
    before = policy("python3")
    action = plan_resource(Inputs(before.key, entry(before), remembered(before), hold=BEING_WRITTEN), NOW)
    assert (action.verb, action.generation, action.hold) == (Verb.none, 1, BEING_WRITTEN)
    assert action.cause.startswith("up to date (web.yaml is being written")


# -- removal ---------------------------------------------------------------------------------------


def test_removed_resource_is_deleted() -> None:
    action = plan_removal(remembered(workload(), generation=3))
    assert (action.verb, action.cause, action.generation) == (Verb.delete, "removed from the desired state", 3)
    assert action.hold is None


def test_prune_disabled_keeps_an_orphan() -> None:
    kept = workload().model_copy(update={"metadata": workload().metadata.model_copy(update={"annotations": {PRUNE_ANNOTATION: "disabled"}})})
    action = plan_removal(remembered(kept))
    assert action.verb is Verb.none
    assert action.orphaned and action.cause.startswith("removed from the desired state, but")
    assert action.orphaned and action.hold is None


# -- generations ---------------------------------------------------------------------------------


def test_first_generation_is_one() -> None:
    assert next_generation(None, entry(workload())) == 1


def test_generation_stays_while_the_spec_is_unchanged() -> None:
    web = workload()
    assert next_generation(remembered(web, generation=4), entry(web)) == 4


def test_generation_bumps_when_the_spec_changes() -> None:
    assert next_generation(remembered(workload(), generation=4), entry(workload(args=["x"]))) == 5


def test_labels_do_not_change_the_spec_hash_or_generation() -> None:
    plain, labelled = workload(), workload(labels={"app": "demo"})
    assert spec_hash(plain) == spec_hash(labelled)
    assert next_generation(remembered(plain, generation=2), entry(labelled)) == 2
    action = plan_workload(labelled, remembered(plain, generation=2), running(plain))
    assert (action.verb, action.generation) == (Verb.none, 2)


def test_equivalent_spellings_have_the_same_spec_hash() -> None:
    assert spec_hash(workload(resources={"memory": "8Gi"})) == spec_hash(workload(resources={"memory": 8 * 2**30}))
    assert spec_hash(workload()) == spec_hash(workload(restart={"policy": "Always"}, env={}))


# -- noting observations: exits and back-off -------------------------------------------------------


def test_nothing_observed_leaves_the_record_as_it_is() -> None:
    web = workload()
    record = remembered(web, consecutive_failures=2, next_retry_at=NOW, last_failure=failure())
    assert note(record, None, web) == record


def test_a_new_generation_starts_the_back_off_afresh() -> None:
    web = workload()
    record = remembered(web, generation=2, consecutive_failures=4, next_retry_at=NOW + timedelta(minutes=1),
                        last_failure=failure())
    noted = note(record, None, web, generation=3)
    assert (noted.consecutive_failures, noted.next_retry_at, noted.last_failure) == (0, None, None)
    assert noted.generation == 2  # the record keeps its generation until the pass records the new one


def test_a_new_generation_forgives_an_exit_already_counted() -> None:
    web = workload()
    exit_info = ended(pid=100)
    counted = note(remembered(web), exit_info, web)
    assert counted.next_retry_at is not None
    noted = note(counted, exit_info, web, generation=2)
    assert (noted.consecutive_failures, noted.next_retry_at) == (0, None)
    assert noted.last_exit == exit_info


def test_a_new_exit_under_a_new_generation_counts_from_one() -> None:
    web = workload()
    record = remembered(web, consecutive_failures=5, next_retry_at=NOW, last_failure=failure())
    exit_info = ended(pid=300)
    noted = note(record, exit_info, web, generation=2)
    assert noted.consecutive_failures == 1
    assert noted.next_retry_at == exit_info.finished_at + timedelta(seconds=1)
    assert noted.last_failure is None


def test_first_exit_schedules_the_initial_delay() -> None:
    web = workload()
    exit_info = ended(pid=100)
    record = note(remembered(web), exit_info, web)
    assert record.consecutive_failures == 1
    assert record.next_retry_at == exit_info.finished_at + timedelta(seconds=1)
    assert record.last_exit == exit_info


def test_the_same_exit_is_counted_once() -> None:
    web = workload()
    once = note(remembered(web), ended(pid=100), web)
    twice = note(once, ended(pid=100), web)
    assert twice == once
    assert twice.consecutive_failures == 1


@pytest.mark.parametrize(
    "later", [ended(pid=100, finished_at=NOW), ended(pid=101)], ids=["reused-pid", "same-time-other-pid"]
)
def test_an_exit_recorded_before_runs_were_named_is_matched_by_pid_and_finish_time(later: ExitInfo) -> None:
    web = workload()
    once = note(remembered(web), ended(pid=100), web)
    twice = note(once, later, web)
    assert twice.consecutive_failures == 2
    assert twice.last_exit == later


def test_an_exit_is_told_by_its_run_not_by_a_finish_time_converted_between_clocks() -> None:
    """The engine's FinishedAt on the reconciler's clock moves with the offset between the clocks (a slewed system
    clock): the same run's exit seen again is not counted again; another run's, at the same time, is."""
    web = workload()
    run = "container 5e1f started 2026-12-05T21:00:00.1Z finished 2026-12-05T21:00:01.2Z"
    once = note(remembered(web), ended(pid=100).model_copy(update={"run": run}), web)
    slewed = ended(pid=100, finished_at=NOW - timedelta(seconds=1, milliseconds=20)).model_copy(update={"run": run})
    assert note(once, slewed, web) == once
    another = note(once, ended(pid=100).model_copy(update={"run": run.replace("5e1f", "77ab")}), web)
    assert another.consecutive_failures == 2


def test_an_exit_the_policy_does_not_restart_is_recorded_without_a_retry() -> None:
    web = workload(restart={"policy": "OnFailure"})
    exit_info = ended(code=0)
    record = remembered(web, consecutive_failures=2, next_retry_at=NOW + timedelta(seconds=30))
    noted = note(record, exit_info, web)
    assert noted.last_exit == exit_info
    assert noted.next_retry_at is None
    assert noted.consecutive_failures == 2


@pytest.mark.parametrize(
    ("policy_name", "exit_info", "scheduled"),
    [
        ("Always", ended(code=0), True),
        ("Always", ended(code=None), True),
        ("OnFailure", ended(code=3), True),
        ("OnFailure", ended(code=None, signal=9), True),
        ("OnFailure", ended(code=None), False),
        ("OnFailure", ended(code=0), False),
        ("Never", ended(code=1), False),
        ("Never", ended(code=None, signal=9), False),
    ],
)
def test_back_off_is_scheduled_only_for_an_exit_that_restarts(policy_name: str, exit_info: ExitInfo, scheduled: bool) -> None:
    web = workload(restart={"policy": policy_name})
    noted = note(remembered(web), exit_info, web)
    assert noted.last_exit == exit_info
    if scheduled:
        assert (noted.consecutive_failures, noted.next_retry_at) == (1, exit_info.finished_at + timedelta(seconds=1))
    else:
        assert (noted.consecutive_failures, noted.next_retry_at) == (0, None)


def test_back_off_doubles_per_consecutive_failure() -> None:
    web = workload()
    record = remembered(web)
    delays = []
    for pid in range(100, 105):
        exit_info = ended(pid=pid)
        record = note(record, exit_info, web)
        delays.append((record.next_retry_at - exit_info.finished_at).total_seconds())
    assert delays == [1, 2, 4, 8, 16]
    assert record.consecutive_failures == 5


def test_back_off_is_capped_at_max_seconds() -> None:
    web = workload(restart={"backoff": {"initialSeconds": 2, "maxSeconds": 10}})
    record = remembered(web)
    delays = []
    for pid in range(100, 106):
        exit_info = ended(pid=pid)
        record = note(record, exit_info, web)
        delays.append((record.next_retry_at - exit_info.finished_at).total_seconds())
    assert delays == [2, 4, 8, 10, 10, 10]


def test_a_long_run_resets_the_back_off() -> None:
    web = workload(restart={"backoff": {"resetAfterSeconds": 600}})
    record = remembered(web, consecutive_failures=6)
    exit_info = ended(pid=200, ran_seconds=601)
    record = note(record, exit_info, web)
    assert record.consecutive_failures == 1
    assert record.next_retry_at == exit_info.finished_at + timedelta(seconds=1)


def test_a_short_run_keeps_counting() -> None:
    web = workload(restart={"backoff": {"resetAfterSeconds": 600}})
    record = note(remembered(web, consecutive_failures=6), ended(pid=200, ran_seconds=599), web)
    assert record.consecutive_failures == 7


def test_failed_start_is_scheduled_like_an_exit() -> None:
    web = workload()
    record = schedule_retry(remembered(web, consecutive_failures=1), NOW, 0.0, web)
    assert (record.consecutive_failures, record.next_retry_at) == (2, NOW + timedelta(seconds=2))


# -- models and policies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "field"),
    [(model(), model("models/other.gguf"), "spec.source"), (policy("python3"), policy("python3", "node"), "spec.native.trustedExecutables")],
    ids=["Model", "Policy"],
)
def test_models_and_policies_are_created_kept_and_updated(before: Resource, after: Resource, field: str) -> None:
    key = before.key
    created = plan_resource(Inputs(key, entry(before), None), NOW)
    assert (created.verb, created.cause, created.generation, created.launch) == (Verb.create, "new resource", 1, None)
    kept = plan_resource(Inputs(key, entry(before), remembered(before)), NOW)
    assert (kept.verb, kept.cause, kept.generation) == (Verb.none, "up to date", 1)
    updated = plan_resource(Inputs(key, entry(after), remembered(before)), NOW)
    assert (updated.verb, updated.cause, updated.generation) == (Verb.update, f"{field} changed", 2)


def test_an_oom_kill_is_a_failure_even_with_an_unknown_exit_code() -> None:
    oom = ExitInfo(pid=4242, code=None, signal=None, finished_at=NOW, ran_seconds=1.0, oom_killed=True)
    assert oom.failed is True
    assert restarts(workload(restart={"policy": "OnFailure"}), oom)


# -- a driver that cannot see its workload -------------------------------------------------------------------------


def test_unknown_state_is_left_alone_not_started_twice_nor_called_gone() -> None:
    web = workload()
    unknown = ProcessObservation(ProcessState.unknown, problem="Docker engine at unix:///x is not reachable: refused")
    action = plan_workload(web, remembered(web), unknown)
    assert action.verb is Verb.none and action.launch is None
    assert action.blocked is not None and action.blocked.reason == "EngineUnavailable"
    assert "not reachable" in action.cause


def test_a_vanished_container_is_named_in_the_cause() -> None:
    web = workload()
    gone = ProcessObservation(ProcessState.absent, vanished="container 0123456789ab")
    action = plan_workload(web, remembered(web), gone)
    assert action.verb is Verb.create and action.cause == "container 0123456789ab is gone: removed outside the reconciler"
    assert plan_workload(web, remembered(web), ABSENT).cause == "not running"


def test_a_workload_ended_for_good_stays_ended_when_a_start_would_be_blocked() -> None:
    done = workload(restart={"policy": "Never"})
    ended = exited(done, ExitInfo(pid=4242, code=0, finished_at=NOW - timedelta(minutes=1), ran_seconds=3.0))
    gpu_taken = Blocked("InsufficientGPUs", "needs 1 GPU(s); 1 fit, in use by Workload/next")
    action = plan_resource(Inputs(WEB, entry(done), remembered(done), ended, None, blocked=gpu_taken), NOW)
    assert action.verb is Verb.none and action.blocked is None
    assert action.cause == "process exited with code 0; restart policy Never does not restart it"
    changed = workload(restart={"policy": "Never"}, env={"A": "1"})
    again = plan_resource(Inputs(WEB, entry(changed), remembered(done), ended, None, blocked=gpu_taken), NOW)
    assert again.blocked == gpu_taken  # a new generation wants a start: the block is what stops it
