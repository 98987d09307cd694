"""Gate: each planned action is approved or denied with reasons naming the rule. Pure."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from reconciler.api.kinds import Policy, Workload
from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.diff.plan import Action, Verb
from reconciler.drive.launch import render_launch
from reconciler.gate.verdict import Decision, decide

WEB = ResourceKey("Workload", "web")
RULE = "native.trustedExecutables"


def policy(*executables: str, name: str = "workstation") -> Policy:
    return Policy.model_validate({
        "apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": name},
        "spec": {"native": {"trustedExecutables": [{"executable": executable} for executable in executables]}},
    })


def start(command: str = "python3", verb: Verb = Verb.create) -> Action:
    web = Workload.model_validate({
        "apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "web"},
        "spec": {"command": [command, "-m", "http.server"]},
    })
    return Action(WEB, verb, "not running", 1, render_launch(web.spec, PurePosixPath("/srv/desired-state")))


def test_without_a_policy_starting_a_process_is_denied() -> None:
    verdict = decide(start(), None, "/usr/bin/python3")
    assert verdict.decision is Decision.deny and not verdict.approved
    (reason,) = verdict.reasons
    assert reason.rule == RULE
    assert reason.message == (
        "native executable 'python3' (/usr/bin/python3) is not trusted by default policy: "
        "write a Policy that lists it in spec.native.trustedExecutables"
    )
    assert str(reason) == f"{RULE}: {reason.message}"


def test_trusted_by_name() -> None:
    verdict = decide(start("python3"), policy("python3"), "/usr/bin/python3")
    assert verdict.decision is Decision.approve and verdict.approved
    (reason,) = verdict.reasons
    assert reason.rule == RULE
    assert reason.message == "'python3' (/usr/bin/python3) is trusted by Policy/workstation"


def test_trusted_by_resolved_absolute_path() -> None:
    verdict = decide(start("python3"), policy("/usr/bin/python3"), "/usr/bin/python3")
    assert verdict.decision is Decision.approve
    assert verdict.reasons[0].rule == RULE
    assert "(/usr/bin/python3)" in verdict.reasons[0].message


def test_trusted_path_without_a_resolved_executable_is_not_assumed() -> None:
    verdict = decide(start("python3"), policy("/usr/bin/python3"), None)
    assert verdict.decision is Decision.deny


def test_trusted_path_does_not_trust_another_resolution_of_the_name() -> None:
    verdict = decide(start("python3"), policy("/usr/bin/python3"), "/home/me/bin/python3")
    assert verdict.decision is Decision.deny
    assert "'python3' (/home/me/bin/python3)" in verdict.reasons[0].message


def test_trusted_name_does_not_trust_a_different_path_with_that_basename() -> None:
    verdict = decide(start("/tmp/evil/python3"), policy("python3"), "/tmp/evil/python3")
    assert verdict.decision is Decision.deny


def test_untrusted_executable_is_denied_by_name_with_a_fix() -> None:
    verdict = decide(start("node"), policy("python3"), "/usr/bin/node")
    assert verdict.decision is Decision.deny
    (reason,) = verdict.reasons
    assert reason.rule == RULE
    assert reason.message == (
        "native executable 'node' (/usr/bin/node) is not trusted by Policy/workstation: "
        "add it to spec.native.trustedExecutables of Policy/workstation"
    )


def test_recreate_is_gated_like_create() -> None:
    assert decide(start("node", Verb.recreate), policy("python3"), None).decision is Decision.deny
    assert decide(start("python3", Verb.recreate), policy("python3"), None).decision is Decision.approve


@pytest.mark.parametrize("verb", [Verb.delete, Verb.update, Verb.none])
def test_actions_that_start_nothing_are_approved_even_without_a_policy(verb: Verb) -> None:
    verdict = decide(Action(WEB, verb, "whatever", 1), None)
    assert verdict.decision is Decision.approve
    assert [reason.rule for reason in verdict.reasons] == ["no-side-effects"]


def test_creating_a_resource_without_a_launch_is_approved() -> None:
    verdict = decide(Action(ResourceKey("Model", "tiny"), Verb.create, "new resource", 1), None)
    assert verdict.decision is Decision.approve
