"""Diff: (desired, remembered, observed, now) -> one action with its cause. Pure: no processes, no clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any

import pytest

from reconciler.api.kinds import Model, Policy, Workload, spec_hash
from reconciler.api.meta import API_VERSION, PRUNE_ANNOTATION, Resource, ResourceKey
from reconciler.api.status import ExitInfo
from reconciler.diff.plan import Action, Inputs, Verb, account_exit, next_generation, plan_resource, schedule_retry
from reconciler.drive.launch import LaunchSpec, render_launch
from reconciler.drive.process import ProcessObservation, ProcessRecord, ProcessState
from reconciler.load.desired import DesiredEntry
from reconciler.load.validate import LoadError
from reconciler.record.store import ResourceRecord

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
SPEC_DIR = PurePosixPath("/srv/desired-state")
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


def launch_of(resource: Workload) -> LaunchSpec:
    return render_launch(resource.spec, SPEC_DIR)


def process(resource: Workload, pid: int = 4242, generation: int = 1, exit: ExitInfo | None = None) -> ProcessRecord:
    return ProcessRecord(
        name=resource.name, pid=pid, create_time=1_714_560_000.0, launch=launch_of(resource),
        generation=generation, started_at=NOW - timedelta(minutes=5), exit=exit,
    )


def running(resource: Workload, **fields: Any) -> ProcessObservation:
    return ProcessObservation(ProcessState.running, process(resource, **fields))


def ended(code: int | None = 1, pid: int = 4242, ran_seconds: float = 3.0, signal: int | None = None,
          finished_at: datetime = NOW - timedelta(seconds=1)) -> ExitInfo:
    return ExitInfo(pid=pid, code=code, signal=signal, finished_at=finished_at, ran_seconds=ran_seconds)


def exited(resource: Workload, exit_info: ExitInfo | None = None) -> ProcessObservation:
    exit_info = exit_info or ended()
    return ProcessObservation(ProcessState.exited, process(resource, pid=exit_info.pid, exit=exit_info))


def plan_workload(desired: Workload, record: ResourceRecord | None, observed: ProcessObservation,
                  now: datetime = NOW) -> Action:
    inputs = Inputs(WEB, entry(desired), record, observed, launch_of(desired))
    return plan_resource(inputs, now, allow_prune=True)


def plan_removal(record: ResourceRecord | None, allow_prune: bool = True, **inputs: Any) -> Action:
    return plan_resource(Inputs(WEB, None, record, **inputs), NOW, allow_prune)


# -- workloads: create, keep, recreate, update ----------------------------------------------------


def test_new_workload_is_created() -> None:
    web = workload()
    action = plan_workload(web, None, ABSENT)
    assert (action.verb, action.cause, action.generation) == (Verb.create, "not running", 1)
    assert action.launch == launch_of(web)
    assert action.changes_something


def test_running_with_the_same_launch_needs_nothing() -> None:
    web = workload()
    action = plan_workload(web, remembered(web), running(web))
    assert (action.verb, action.cause, action.generation) == (Verb.none, "running", 1)
    assert action.launch is None and not action.changes_something


def test_changed_args_recreate_the_process() -> None:
    old, new = workload(), workload(args=["--bind", "127.0.0.1"])
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause, action.generation) == (Verb.recreate, "spec.command/args changed", 2)
    assert action.launch == launch_of(new)


def test_changed_env_recreates_naming_spec_env() -> None:
    old, new = workload(env={"PORT": "8080"}), workload(env={"PORT": "9090"})
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause) == (Verb.recreate, "spec.env changed")


def test_changed_memory_limit_recreates_naming_spec_resources_memory() -> None:
    old, new = workload(), workload(resources={"memory": "1Gi"})
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause) == (Verb.recreate, "spec.resources.memory changed")
    assert action.launch is not None and action.launch.memory_limit == 2**30


def test_spec_change_outside_the_launch_is_an_update() -> None:
    old, new = workload(), workload(restart={"policy": "OnFailure"})
    action = plan_workload(new, remembered(old), running(old))
    assert (action.verb, action.cause, action.generation) == (Verb.update, "spec.restart changed", 2)
    assert action.launch is None


def test_relative_working_dir_is_taken_from_the_spec_folder() -> None:
    launch = launch_of(workload(workingDir="data"))
    assert launch.working_dir == "/srv/desired-state/data"


# -- workloads: exits, restart policy and back-off ---------------------------------------------


def test_failed_exit_waits_out_the_back_off() -> None:
    web = workload()
    retry_at = NOW + timedelta(seconds=4)
    action = plan_workload(web, remembered(web, next_retry_at=retry_at, consecutive_failures=3), exited(web))
    assert action.verb is Verb.none
    assert action.cause == "back-off: process exited with code 1; next start in 4.0s"
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
    assert (action.verb, action.cause) == (Verb.none, "process exited with code 0; restart policy OnFailure")


def test_on_failure_restarts_a_failed_exit() -> None:
    web = workload(restart={"policy": "OnFailure"})
    action = plan_workload(web, remembered(web), exited(web, ended(code=2)))
    assert (action.verb, action.cause) == (Verb.create, "process exited with code 2")


def test_never_does_not_restart_even_a_failure() -> None:
    web = workload(restart={"policy": "Never"})
    action = plan_workload(web, remembered(web), exited(web, ended(code=1)))
    assert (action.verb, action.cause) == (Verb.none, "process exited with code 1; restart policy Never")


def test_exited_with_a_changed_launch_starts_at_once() -> None:
    old, new = workload(), workload(args=["8081"])
    record = remembered(old, next_retry_at=NOW + timedelta(minutes=5))
    action = plan_workload(new, record, exited(old))
    assert action.verb is Verb.create
    assert action.cause == "spec.command/args changed; the old process had ended"
    assert (action.generation, action.retry_at) == (2, None)
    assert action.launch == launch_of(new)


def test_exited_with_a_changed_spec_outside_the_launch_skips_the_back_off() -> None:
    old, new = workload(), workload(restart={"backoff": {"initialSeconds": 2}})
    record = remembered(old, next_retry_at=NOW + timedelta(minutes=5))
    action = plan_workload(new, record, exited(old))
    assert (action.verb, action.generation) == (Verb.create, 2)


def test_failed_start_waits_out_the_back_off() -> None:
    web = workload()
    retry_at = NOW + timedelta(seconds=3)
    action = plan_workload(web, remembered(web, next_retry_at=retry_at, consecutive_failures=1), ABSENT)
    assert action.verb is Verb.none
    assert action.cause == "back-off after a failed start; next start in 3.0s"
    assert action.retry_at == retry_at


def test_failed_start_is_retried_after_the_back_off() -> None:
    web = workload()
    action = plan_workload(web, remembered(web, next_retry_at=NOW - timedelta(seconds=1)), ABSENT)
    assert (action.verb, action.cause) == (Verb.create, "not running")


def test_failed_start_is_retried_at_once_when_the_spec_changed() -> None:
    old, new = workload(command=["/opt/missing"]), workload()
    action = plan_workload(new, remembered(old, next_retry_at=NOW + timedelta(minutes=5)), ABSENT)
    assert (action.verb, action.cause, action.generation) == (Verb.create, "not running", 2)


# -- removal ---------------------------------------------------------------------------------------


def test_removed_resource_is_deleted() -> None:
    action = plan_removal(remembered(workload(), generation=3))
    assert (action.verb, action.cause, action.generation) == (Verb.delete, "removed from the desired state", 3)


def test_rejected_new_version_holds_instead_of_deleting() -> None:
    rejected = LoadError("web.yaml", "expected a valid list, got 'python3'", None, "spec.command", WEB)
    action = plan_removal(remembered(workload(), generation=3), rejected=(rejected,))
    assert (action.verb, action.held, action.generation) == (Verb.none, True, 3)
    assert action.cause == f"new version rejected: {rejected}; generation 3 stays in force"


def test_unreadable_source_file_holds_instead_of_deleting() -> None:
    problem = LoadError("web.yaml", "invalid YAML: mapping values are not allowed here")
    action = plan_removal(remembered(workload(), generation=2), source_errors=(problem,))
    assert (action.verb, action.held) == (Verb.none, True)
    assert action.cause == f"its file cannot be read: {problem}; generation 2 stays in force"


def test_prune_disabled_keeps_an_orphan() -> None:
    kept = workload().model_copy(update={"metadata": workload().metadata.model_copy(update={"annotations": {PRUNE_ANNOTATION: "disabled"}})})
    action = plan_removal(remembered(kept))
    assert action.verb is Verb.none
    assert action.cause.startswith("orphaned: removed from the desired state")
    assert not action.held


def test_nothing_is_pruned_when_pruning_is_not_allowed() -> None:
    action = plan_removal(remembered(workload()), allow_prune=False)
    assert (action.verb, action.held) == (Verb.none, True)
    assert "--allow-empty" in action.cause


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


# -- exit accounting and back-off -------------------------------------------------------------------


def test_first_exit_schedules_the_initial_delay() -> None:
    web = workload()
    exit_info = ended(pid=100)
    record = account_exit(remembered(web), exit_info, web)
    assert record.consecutive_failures == 1
    assert record.next_retry_at == exit_info.finished_at + timedelta(seconds=1)
    assert record.last_exit == exit_info


def test_the_same_exit_is_counted_once() -> None:
    web = workload()
    once = account_exit(remembered(web), ended(pid=100), web)
    twice = account_exit(once, ended(pid=100), web)
    assert twice == once
    assert twice.consecutive_failures == 1


def test_back_off_doubles_per_consecutive_failure() -> None:
    web = workload()
    record = remembered(web)
    delays = []
    for pid in range(100, 105):
        exit_info = ended(pid=pid)
        record = account_exit(record, exit_info, web)
        delays.append((record.next_retry_at - exit_info.finished_at).total_seconds())
    assert delays == [1, 2, 4, 8, 16]
    assert record.consecutive_failures == 5


def test_back_off_is_capped_at_max_seconds() -> None:
    web = workload(restart={"backoff": {"initialSeconds": 2, "maxSeconds": 10}})
    record = remembered(web)
    delays = []
    for pid in range(100, 106):
        exit_info = ended(pid=pid)
        record = account_exit(record, exit_info, web)
        delays.append((record.next_retry_at - exit_info.finished_at).total_seconds())
    assert delays == [2, 4, 8, 10, 10, 10]


def test_a_long_run_resets_the_back_off() -> None:
    web = workload(restart={"backoff": {"resetAfterSeconds": 600}})
    record = remembered(web, consecutive_failures=6)
    exit_info = ended(pid=200, ran_seconds=601)
    record = account_exit(record, exit_info, web)
    assert record.consecutive_failures == 1
    assert record.next_retry_at == exit_info.finished_at + timedelta(seconds=1)


def test_a_short_run_keeps_counting() -> None:
    web = workload(restart={"backoff": {"resetAfterSeconds": 600}})
    record = account_exit(remembered(web, consecutive_failures=6), ended(pid=200, ran_seconds=599), web)
    assert record.consecutive_failures == 7


def test_failed_start_is_scheduled_like_an_exit() -> None:
    web = workload()
    record = schedule_retry(remembered(web, consecutive_failures=1), NOW, 0.0, web)
    assert (record.consecutive_failures, record.next_retry_at) == (2, NOW + timedelta(seconds=2))


# -- models and policies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "field"),
    [(model(), model("models/other.gguf"), "spec.source"), (policy("python3"), policy("python3", "node"), "spec.native")],
    ids=["Model", "Policy"],
)
def test_models_and_policies_are_created_kept_and_updated(before: Resource, after: Resource, field: str) -> None:
    key = before.key
    created = plan_resource(Inputs(key, entry(before), None), NOW, True)
    assert (created.verb, created.cause, created.generation, created.launch) == (Verb.create, "new resource", 1, None)
    kept = plan_resource(Inputs(key, entry(before), remembered(before)), NOW, True)
    assert (kept.verb, kept.cause, kept.generation) == (Verb.none, "up to date", 1)
    updated = plan_resource(Inputs(key, entry(after), remembered(before)), NOW, True)
    assert (updated.verb, updated.cause, updated.generation) == (Verb.update, f"{field} changed", 2)
