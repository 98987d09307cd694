"""Gate: each planned action is approved or denied with reasons naming the rule. Pure."""

from __future__ import annotations

import pytest

from reconciler.api.kinds import Policy, Workload
from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.diff.plan import Action, Verb
from reconciler.api.launch import render_launch
from reconciler.gate.verdict import Decision, Facts, decide

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
        "spec": {"command": [command, "-m", "http.server"], "args": ["8080"]},
    })
    return Action(WEB, verb, "not running", 1, render_launch(web.spec, tuple(web.spec.command or ()), tuple(web.spec.args), "/srv/desired-state", None))


FOUND = "/usr/bin/python3"  # where PATH finds 'python3'
REAL = "/usr/bin/python3.11"  # the file that symlink points at


def test_without_a_policy_starting_a_process_is_denied() -> None:
    verdict = decide(start(), None, Facts((FOUND, REAL)))
    assert verdict.decision is Decision.deny and not verdict.approved
    (reason,) = verdict.reasons
    assert reason.rule == RULE
    assert reason.message == (
        "native executable 'python3' (/usr/bin/python3 -> /usr/bin/python3.11) is not trusted by default policy: "
        "write a Policy that lists it in spec.native.trustedExecutables"
    )
    assert str(reason) == f"{RULE}: {reason.message}"


def test_trusted_by_name_as_written() -> None:
    verdict = decide(start("python3"), policy("python3"), Facts((FOUND, REAL)))
    assert verdict.decision is Decision.approve and verdict.approved
    (reason,) = verdict.reasons
    assert reason.rule == RULE
    assert reason.message == "'python3' (/usr/bin/python3 -> /usr/bin/python3.11) is trusted by Policy/workstation"


def test_trusted_by_the_path_it_is_found_at() -> None:
    verdict = decide(start("python3"), policy(FOUND), Facts((FOUND, REAL)))
    assert verdict.decision is Decision.approve
    assert verdict.reasons[0].rule == RULE


def test_trusted_by_the_real_path_behind_a_symlink() -> None:
    verdict = decide(start("python3"), policy(REAL), Facts((FOUND, REAL)))
    assert verdict.decision is Decision.approve
    assert verdict.reasons[0].message == "'python3' (/usr/bin/python3 -> /usr/bin/python3.11) is trusted by Policy/workstation"


def test_a_path_found_without_a_symlink_is_shown_once() -> None:
    verdict = decide(start("python3"), policy(FOUND), Facts((FOUND, FOUND)))
    assert verdict.reasons[0].message == "'python3' (/usr/bin/python3) is trusted by Policy/workstation"


def test_an_absolute_command_is_not_repeated_in_the_reason() -> None:
    verdict = decide(start(FOUND), policy(FOUND), Facts((FOUND, FOUND)))
    assert verdict.decision is Decision.approve
    assert verdict.reasons[0].message == "'/usr/bin/python3' is trusted by Policy/workstation"
    linked = decide(start(FOUND), None, Facts((FOUND, REAL)))
    assert "'/usr/bin/python3' (/usr/bin/python3.11) is not trusted" in linked.reasons[0].message


def test_trusted_path_without_a_found_executable_is_not_assumed() -> None:
    verdict = decide(start("python3"), policy(FOUND), Facts(()))
    assert verdict.decision is Decision.deny
    assert "native executable 'python3' is not trusted" in verdict.reasons[0].message


def test_trusted_path_does_not_trust_another_resolution_of_the_name() -> None:
    verdict = decide(start("python3"), policy(FOUND), Facts(("/home/me/bin/python3", "/home/me/bin/python3")))
    assert verdict.decision is Decision.deny
    assert "'python3' (/home/me/bin/python3)" in verdict.reasons[0].message


def test_a_symlink_to_an_untrusted_file_is_denied_naming_both() -> None:
    verdict = decide(start("python3"), policy("/opt/trusted/python3"), Facts(("/home/me/bin/python3", "/tmp/evil/python3")))
    assert verdict.decision is Decision.deny
    assert "'python3' (/home/me/bin/python3 -> /tmp/evil/python3)" in verdict.reasons[0].message


def test_trusted_name_does_not_trust_a_different_path_with_that_basename() -> None:
    verdict = decide(start("/tmp/evil/python3"), policy("python3"), Facts(("/tmp/evil/python3", "/tmp/evil/python3")))
    assert verdict.decision is Decision.deny


def test_args_are_never_the_executable() -> None:
    verdict = decide(start("node"), policy("8080", "-m", "http.server"), Facts(("/usr/bin/node", "/usr/bin/node")))
    assert verdict.decision is Decision.deny


def test_untrusted_executable_is_denied_by_name_with_a_fix() -> None:
    verdict = decide(start("node"), policy("python3"), Facts(("/usr/bin/node", "/usr/bin/node")))
    assert verdict.decision is Decision.deny
    (reason,) = verdict.reasons
    assert reason.rule == RULE
    assert reason.message == (
        "native executable 'node' (/usr/bin/node) is not trusted by Policy/workstation: "
        "add it to spec.native.trustedExecutables of Policy/workstation"
    )


def test_recreate_is_gated_like_create() -> None:
    assert decide(start("node", Verb.recreate), policy("python3")).decision is Decision.deny
    assert decide(start("python3", Verb.recreate), policy("python3")).decision is Decision.approve


@pytest.mark.parametrize("verb", [Verb.delete, Verb.update, Verb.none])
def test_actions_that_start_nothing_are_approved_even_without_a_policy(verb: Verb) -> None:
    verdict = decide(Action(WEB, verb, "whatever", 1), None)
    assert verdict.decision is Decision.approve
    assert [reason.rule for reason in verdict.reasons] == ["no-side-effects"]


def test_creating_a_resource_without_a_launch_is_approved() -> None:
    verdict = decide(Action(ResourceKey("Model", "tiny"), Verb.create, "new resource", 1), None)
    assert verdict.decision is Decision.approve


def test_a_trusted_engine_does_not_cover_a_binary_the_spec_names() -> None:
    from reconciler.diff.engines import engine_command
    from reconciler.observe.host import EngineFacts

    engines = Policy.model_validate({"metadata": {"name": "p"}, "spec": {"native": {"trustedEngines": ["llama.cpp"]}}})
    spec = Workload.model_validate({"metadata": {"name": "chat"}, "spec": {
        "engine": "llama.cpp", "model": "m", "port": 8080, "llamaCpp": {"executable": "/usr/bin/touch"}}}).spec
    command = engine_command(spec, "/m.gguf", EngineFacts())
    launch = render_launch(spec, command.command, command.args, "/w", "/usr/bin/touch", executable_from_spec=command.executable_from_spec)
    verdict = decide(Action(WEB, Verb.create, "not running", 1, launch), engines, Facts(("/usr/bin/touch",)))
    assert verdict.decision is Decision.deny and "/usr/bin/touch" in str(verdict.reasons[0])


def test_an_exec_health_check_must_run_a_trusted_program() -> None:
    policy = Policy.model_validate({"metadata": {"name": "p"}, "spec": {"native": {"trustedExecutables": [{"executable": "python3"}]}}})
    web = Workload.model_validate({"metadata": {"name": "web"}, "spec": {"command": ["python3"]}})
    launch = render_launch(web.spec, ("python3",), (), "/w", "/usr/bin/python3")
    action = Action(WEB, Verb.create, "not running", 1, launch)
    assert decide(action, policy, Facts(("/usr/bin/python3",))).approved
    denied = decide(action, policy, Facts(("/usr/bin/python3",), ("touch", "/usr/bin/touch")))
    assert denied.decision is Decision.deny and "health check program 'touch' (/usr/bin/touch)" in str(denied.reasons[0])
    assert decide(action, policy, Facts(("/usr/bin/python3",), ("python3", "/usr/bin/python3"))).approved


def test_a_bare_name_is_not_trusted_when_the_spec_chooses_its_path() -> None:
    policy = Policy.model_validate({"metadata": {"name": "p"}, "spec": {"native": {"trustedExecutables": [{"executable": "python3"}]}}})
    sneaky = Workload.model_validate({"metadata": {"name": "web"}, "spec": {"command": ["python3"], "env": {"PATH": "/tmp/evil"}}})
    launch = render_launch(sneaky.spec, ("python3",), (), "/w", "/tmp/evil/python3")
    verdict = decide(Action(WEB, Verb.create, "not running", 1, launch), policy, Facts(("/tmp/evil/python3",)))
    assert verdict.decision is Decision.deny and "/tmp/evil/python3" in str(verdict.reasons[0])


def test_a_rendered_engine_is_advised_its_engine_rule_not_its_interpreter() -> None:
    from reconciler.diff.engines import engine_command
    from reconciler.observe.host import EngineFacts

    spec = Workload.model_validate({"metadata": {"name": "chat"}, "spec": {"engine": "llama.cpp", "model": "m", "port": 8080}}).spec
    command = engine_command(spec, "/m.gguf", EngineFacts(llama_cpp_python=FOUND))  # python3 -m llama_cpp.server
    launch = render_launch(spec, command.command, command.args, "/w", FOUND)
    action = Action(WEB, Verb.create, "not running", 1, launch)
    (reason,) = decide(action, None, Facts((FOUND, REAL))).reasons
    assert reason.message.endswith("write a Policy with spec.native.trustedEngines: [llama.cpp]"), reason.message
    assert "trustedExecutables" not in reason.message, "trusting python3 would admit every spec that runs it"
    (reason,) = decide(action, policy("node"), Facts((FOUND, REAL))).reasons
    assert reason.message.endswith("add llama.cpp to spec.native.trustedEngines of Policy/workstation"), reason.message
