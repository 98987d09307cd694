"""An action is the operations the drivers do, in order, each with its cause; the plan's edges order resources.

Pure: the plan is computed from constructed inputs, with no processes or engine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reconciler.api.kinds import ModelVariant
from reconciler.api.launch import ContainerLaunch
from reconciler.api.meta import ResourceKey
from reconciler.diff.footprint import ModelView
from reconciler.diff.plan import Action, Hold, Inputs, OpKind, Verb, plan_resource, prerequisites
from reconciler.observe.host import ModelPresence
from reconciler.load.desired import DesiredState
from tests.test_plan import (
    ABSENT, NOW, WEB, ended, entry, exited, model, plan_removal, plan_workload, policy, remembered, running, workload,
)


def operations(action: object) -> list[tuple[str, str]]:
    return [(op.kind.value, op.cause) for op in action.operations]  # type: ignore[attr-defined]


def test_a_first_start_is_one_start_with_the_action_s_cause() -> None:
    assert operations(plan_workload(workload(), None, ABSENT)) == [("start", "not running")]


def test_a_recreate_is_a_stop_then_a_start() -> None:
    old, new = workload(), workload(args=["--bind", "127.0.0.1"])
    action = plan_workload(new, remembered(old), running(old))
    assert action.verb is Verb.recreate
    assert operations(action) == [("stop", "replaced by the new start"), ("start", "spec.args changed")]
    assert not action.operations[0].keep, "the replaced run is cleared, not kept on record as exited"


def test_a_restart_after_an_exit_clears_the_ended_run_first() -> None:
    web = workload()
    action = plan_workload(web, remembered(web), exited(web, ended(code=1)), now=NOW)
    assert action.verb is Verb.create
    assert [kind for kind, _ in operations(action)] == ["stop", "start"]
    assert operations(action)[0][1] == "what the ended run left is cleared before the new start"


def test_an_unhealthy_stop_keeps_the_run_on_record() -> None:
    web = workload()
    action = replace(plan_workload(web, remembered(web), running(web)), verb=Verb.stop, cause="health check failed")
    (stop,) = action.operations
    assert (stop.kind, stop.cause, stop.keep) == (OpKind.stop, "health check failed", True)


def test_an_image_not_on_this_host_is_pulled_as_its_own_operation() -> None:
    action = plan_workload(workload(), None, ABSENT)
    absent = replace(action, launch=ContainerLaunch(image="busybox:1.36", image_id=None))
    assert operations(absent) == [("pull", "image busybox:1.36 is not on this host"), ("start", "not running")]
    present = replace(action, launch=ContainerLaunch(image="busybox:1.36", image_id="sha256:" + "b" * 64))
    assert operations(present) == [("start", "not running")], "a present image is not pulled"


def test_a_removal_is_one_remove_and_nothing_is_done_for_no_change() -> None:
    web = workload()
    assert operations(plan_removal(remembered(web))) == [("remove", "removed from the desired state")]
    assert plan_workload(web, remembered(web), running(web)).operations == ()


def test_a_workload_comes_after_the_model_it_serves_and_the_policy() -> None:
    served = workload("chat", engine="llama.cpp", model="tiny", port=8080, command=None)
    unrelated = workload("other")
    resources = {ResourceKey("Workload", "chat"): entry(served), ResourceKey("Workload", "other"): entry(unrelated),
                 ResourceKey("Model", "tiny"): entry(model()), ResourceKey("Policy", "workstation"): entry(policy())}
    edges = prerequisites(resources, DesiredState(files=("web.yaml",), resources=resources), {})
    tiny, workstation = ResourceKey("Model", "tiny"), ResourceKey("Policy", "workstation")
    assert edges == {ResourceKey("Workload", "chat"): {tiny, workstation}, ResourceKey("Workload", "other"): {workstation}}


def test_a_removed_workload_comes_after_the_model_its_record_served() -> None:
    served = workload("chat", engine="llama.cpp", model="tiny", port=8080, command=None)
    record = remembered(served)
    keys = [ResourceKey("Workload", "chat"), ResourceKey("Model", "tiny")]
    edges = prerequisites(keys, DesiredState(files=(), resources={}), {ResourceKey("Workload", "chat"): record})
    assert edges == {ResourceKey("Workload", "chat"): {ResourceKey("Model", "tiny")}}
    assert WEB not in edges


def fetching(absent: str | None) -> ModelView:
    """A Model whose one variant is remote: `absent`, why its bytes are to be fetched now (None: they are here)."""
    variant = ModelVariant(name="default", source="https://user:secret@example.org/tiny.gguf", sha256="c" * 64)
    return ModelView(ModelPresence(Path("/state/models/sha256/" + "c" * 64), None if absent else 7), variant,
                     absent=absent)


def plan_model(view: ModelView, record: object = None) -> Action:
    remote = model()  # the diff reads the view of its variant, not its source
    key = ResourceKey("Model", "tiny")
    return plan_resource(Inputs(key, entry(remote), record, model=view), NOW)  # type: ignore[arg-type]


def test_a_model_whose_chosen_variant_is_absent_is_one_fetch_saying_which_from_where_and_why() -> None:
    action = plan_model(fetching("not in the cache"))
    assert (action.verb, action.cause) == (Verb.create, "new resource")
    assert operations(action) == [("fetch", "variant default from https://***@example.org/tiny.gguf: not in the cache")]


def test_a_model_on_record_whose_bytes_were_lost_is_fetched_again_and_a_present_one_is_not() -> None:
    remote = model()  # the diff reads the view of its variant, not its source
    lost = plan_model(fetching("the cached file is gone"), remembered(remote))
    assert lost.verb is Verb.create and operations(lost) == [("fetch", lost.cause)]
    assert lost.cause.endswith(": the cached file is gone")
    present = plan_model(fetching(None), remembered(remote))
    assert (present.verb, present.operations) == (Verb.none, ())


def test_a_held_model_fetches_nothing() -> None:
    remote = model()  # the diff reads the view of its variant, not its source
    key = ResourceKey("Model", "tiny")
    inputs = Inputs(key, entry(remote), remembered(remote), model=fetching("not in the cache"),
                    hold=Hold("InvalidSpec", "the new version is not valid"))
    assert plan_resource(inputs, NOW).operations == ()
