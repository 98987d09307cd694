"""The gate's policy rules, one by one and pure: audit mode, approvals, native exposure, sha256 pins,
requireDigest, memory, what a tightened policy stops, and the Policy model's own validation."""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.api.approval import Answer, Approval
from reconciler.api.kinds import Policy, Workload, spec_hash
from reconciler.api.launch import BindMount, ContainerLaunch, LaunchSpec, render_launch
from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.api.policy import ApprovalKind, ExposedAddress, NativePolicy, PolicySpec, ResourcePolicy, TrustedExecutable
from reconciler.base.sizes import GIB
from reconciler.diff.containers import render_container
from reconciler.diff.engines import EngineCommand, engine_command
from reconciler.diff.plan import Action, Verb
from reconciler.gate.approvals import kinds_of
from reconciler.gate.resources import MemoryUse, memory_problem
from reconciler.gate.verdict import NO_FACTS, Decision, Facts, Reason, Verdict, decide, running_denial
from reconciler.observe.docker_engine import ImageFacts
from reconciler.observe.host import EngineFacts

WEB = ResourceKey("Workload", "web")
SOURCE = "Policy/workstation"
FOUND, REAL = "/usr/bin/python3", "/usr/bin/python3.11"  # where PATH finds python3, and what that symlink points at
PYTHON = Facts((FOUND, REAL))
PIN_A, PIN_B = "a" * 64, "b" * 64
PRESENT = ImageFacts(id="sha256:" + "c" * 64, user=None)
ENGINES = EngineFacts(llama_server="/opt/llama-server", llama_cpp_python="/usr/bin/python3", vllm="/opt/vllm")
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
OTHER_HASH = "f" * 64
IMAGE_DIGEST = "sha256:" + "d" * 64


# -- helpers ---------------------------------------------------------------------------------------------------

def policy(name: str = "workstation", **spec: Any) -> Policy:
    return Policy.model_validate({"apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": name}, "spec": spec})


def workload(**spec: Any) -> Workload:
    return Workload.model_validate({"apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "web"}, "spec": spec})


def native(**spec: Any) -> LaunchSpec:
    """A native launch rendered as the reconciler renders it (python3 serving http unless the spec says otherwise)."""
    spec = {"command": ["python3", "-m", "http.server"]} | spec if spec.get("engine", "process") == "process" else spec
    resolved = workload(**spec).spec
    command = engine_command(resolved, "/models/m.gguf", ENGINES)
    assert isinstance(command, EngineCommand)
    return render_launch(resolved, command.command, command.args, "/w", None, (), None, command.executable_from_spec)


def container(facts: ImageFacts | None = PRESENT, **spec: Any) -> ContainerLaunch:
    resolved = workload(**{"runtime": "container", "image": "busybox:1.36", **spec}).spec
    volumes = tuple(BindMount(source=posixpath.normpath(posixpath.join("/srv/desired-state", volume.source)),
                              target=volume.target, read_only=volume.read_only) for volume in resolved.volumes)
    launch = render_container(resolved, facts, volumes, ())
    assert isinstance(launch, ContainerLaunch)
    return launch


def judge(launch: LaunchSpec | ContainerLaunch, rules: Policy | None, facts: Facts = NO_FACTS,
          verb: Verb = Verb.create) -> Verdict:
    return decide(Action(WEB, verb, "not running", 1, launch), rules, facts)


def approval(answer: Answer = Answer.approve, covering: str = OTHER_HASH, by: str = "alice") -> Approval:
    return Approval(name="web", spec_hash=covering, answer=answer, by=by, at=AT)


def rules_of(reasons: tuple[Reason, ...]) -> list[str]:
    return [reason.rule for reason in reasons]


def memory(wanted_gib: float, committed_gib: float, total_gib: float = 10) -> MemoryUse:
    wanted = int(wanted_gib * GIB)
    return MemoryUse(wanted, f"memory limit {wanted / GIB:.1f} GiB", int(committed_gib * GIB), int(total_gib * GIB))


TRUSTS_PYTHON = {"native": {"trustedExecutables": [{"executable": "python3"}]}}
BOXES = {"containers": {"images": ["busybox:*"], "networks": ["bridge"], "volumeRoots": ["/srv"]}}
CUDA = "/usr/local/cuda/lib64"
ALLOWS_CUDA = {"loaderEnvironment": [{"name": "LD_LIBRARY_PATH", "value": CUDA}]}
HASH = spec_hash(workload(command=["python3", "-m", "http.server"]))


# -- audit mode ------------------------------------------------------------------------------------------------

AUDITED_CASES = {
    "untrusted native": (lambda: native(), {"native": {"trustedExecutables": [{"executable": "node"}]}}, PYTHON,
                         ["native.trustedExecutables"]),
    "disallowed image": (lambda: container(), {"containers": {"images": ["alpine:*"]}}, NO_FACTS, ["containers.images"]),
    "exposed native bind": (lambda: native(host="0.0.0.0", port=8080), TRUSTS_PYTHON, PYTHON, ["network.exposed"]),
    "exposed container port": (lambda: container(ports=[{"containerPort": 8080, "hostIP": "0.0.0.0"}]), BOXES, NO_FACTS,
                               ["network.exposed"]),
    "overcommit": (lambda: native(), TRUSTS_PYTHON, Facts((FOUND, REAL), memory=memory(4, 6)), ["resources.memory"]),
    "everything at once": (lambda: native(host="::", port=8080), {"native": {"trustedExecutables": [{"executable": "node"}]}},
                           Facts((FOUND, REAL), ("touch", "/usr/bin/touch"), memory=memory(20, 0)),
                           ["native.trustedExecutables", "native.trustedExecutables", "network.exposed", "resources.memory"]),
}


@pytest.mark.parametrize("case", AUDITED_CASES, ids=list(AUDITED_CASES))
def test_audit_mode_approves_and_records_exactly_what_enforce_refuses(case: str) -> None:
    make, spec, facts, rules = AUDITED_CASES[case]
    launch = make()
    enforced = judge(launch, policy(**spec), facts)
    assert enforced.decision is Decision.deny and rules_of(enforced.reasons) == rules and enforced.audited == ()
    audited = judge(launch, policy(mode="audit", **spec), facts)
    assert audited.decision is Decision.approve and audited.approved
    assert audited.audited == enforced.reasons  # the same rules and the same sentences
    assert audited.reasons[-1] == Reason("mode", f"{SOURCE} audits: applied regardless")
    assert not set(audited.reasons) & set(enforced.reasons)  # what would be refused is not shown as granting it


def test_audit_mode_keeps_what_grants_a_start_beside_the_mode_reason() -> None:
    verdict = judge(native(host="0.0.0.0", port=8080), policy(mode="audit", **TRUSTS_PYTHON), PYTHON)
    assert rules_of(verdict.reasons) == ["native.trustedExecutables", "mode"]
    assert "is trusted by Policy/workstation" in verdict.reasons[0].message


def test_audit_mode_with_nothing_to_refuse_is_a_plain_approval() -> None:
    verdict = judge(native(), policy(mode="audit", **TRUSTS_PYTHON), PYTHON)
    assert verdict.decision is Decision.approve and verdict.audited == ()
    assert rules_of(verdict.reasons) == ["native.trustedExecutables"]


def test_audit_mode_records_a_missing_approval_and_starts_anyway() -> None:
    spec = TRUSTS_PYTHON | {"approvals": {"required": ["AnyChange"]}}
    facts = Facts((FOUND, REAL), spec_hash=HASH)
    enforced = judge(native(), policy(**spec), facts)
    assert enforced.decision is Decision.needs_approval
    audited = judge(native(), policy(mode="audit", **spec), facts)
    assert audited.decision is Decision.approve and audited.audited == enforced.reasons
    assert rules_of(audited.audited) == ["approvals.required"]


def test_audit_mode_records_refusals_before_the_missing_approval() -> None:
    spec = {"native": {"trustedExecutables": [{"executable": "node"}]}, "approvals": {"required": ["AnyChange"]}}
    enforced = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH))
    audited = judge(native(), policy(mode="audit", **spec), Facts((FOUND, REAL), spec_hash=HASH))
    assert enforced.decision is Decision.deny and rules_of(enforced.reasons) == ["native.trustedExecutables"]
    assert audited.approved and rules_of(audited.audited) == ["native.trustedExecutables", "approvals.required"]
    assert audited.audited[0] == enforced.reasons[0]


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_a_persons_explicit_deny_stands_in_every_mode(mode: str) -> None:
    spec = TRUSTS_PYTHON | {"approvals": {"required": ["AnyChange"]}, "mode": mode}
    verdict = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH, approval=approval(Answer.deny, HASH)))
    assert verdict.decision is Decision.deny and verdict.audited == ()
    assert verdict.reasons[0] == Reason("approvals.answer", "this spec was denied by alice at 2026-01-02T03:04:05+00:00")


def test_an_explicit_deny_lists_what_else_the_policy_refuses() -> None:
    spec = {"approvals": {"required": ["AnyChange"]}, "mode": "audit"}
    verdict = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH, approval=approval(Answer.deny, HASH)))
    assert verdict.decision is Decision.deny
    assert rules_of(verdict.reasons) == ["approvals.answer", "native.trustedExecutables"]


@pytest.mark.parametrize("case", ["untrusted native", "disallowed image", "exposed native bind", "exposed container port"])
def test_running_denial_is_empty_in_audit_mode(case: str) -> None:
    make, spec, facts, rules = AUDITED_CASES[case]
    assert rules_of(running_denial(make(), policy(**spec), facts)) == rules
    assert running_denial(make(), policy(mode="audit", **spec), facts) == ()


# -- approvals -------------------------------------------------------------------------------------------------

K = ApprovalKind
LLAMA = {"engine": "llama.cpp", "model": "m", "port": 8080}
KIND_CASES: dict[str, tuple[Any, dict[str, Any], Facts, set[ApprovalKind]]] = {
    "llama.cpp trusted as an engine": (lambda: native(**LLAMA), {"native": {"trustedEngines": ["llama.cpp"]}},
                                       Facts(("/opt/llama-server",)), {K.any_change}),
    "vllm trusted as an engine": (lambda: native(engine="vllm", model="m", port=8000, resources={"gpus": {"count": 1}}),
                                  {"native": {"trustedEngines": ["vllm"]}}, Facts(("/opt/vllm",)), {K.any_change}),
    "llama.cpp trusted by its executable": (lambda: native(**LLAMA),
                                            {"native": {"trustedExecutables": [{"executable": "/opt/llama-server"}]}},
                                            Facts(("/opt/llama-server",)), {K.any_change, K.native_executable}),
    "llama.cpp naming its own server": (
        lambda: native(**LLAMA, llamaCpp={"executable": "/opt/my-llama"}),
        {"native": {"trustedEngines": ["llama.cpp"], "trustedExecutables": [{"executable": "/opt/my-llama"}]}},
        Facts(("/opt/my-llama",)), {K.any_change, K.native_executable}),
    "llama.cpp bound to every interface": (lambda: native(**LLAMA | {"host": "0.0.0.0"}),
                                           {"native": {"trustedEngines": ["llama.cpp"]},
                                            "network": {"exposed": [{"address": "0.0.0.0"}]}},
                                           Facts(("/opt/llama-server",)), {K.any_change, K.exposure}),
    "trusted process": (lambda: native(port=8080), TRUSTS_PYTHON, PYTHON, {K.any_change, K.native_executable}),
    "trusted process on 0.0.0.0": (lambda: native(host="0.0.0.0", port=8080),
                                   TRUSTS_PYTHON | {"network": {"exposed": [{"address": "0.0.0.0", "ports": [8080]}]}},
                                   PYTHON, {K.any_change, K.native_executable, K.exposure}),
    "trusted process on a LAN address": (lambda: native(host="192.168.1.5", port=8080),
                                         TRUSTS_PYTHON | {"network": {"exposed": [{"address": "192.168.1.5"}]}},
                                         PYTHON, {K.any_change, K.native_executable, K.exposure}),
    "trusted process as root": (lambda: native(user="root"), {"native": {"trustedExecutables": [
        {"executable": "python3"}], "runAsRoot": True}}, PYTHON, {K.any_change, K.native_executable, K.privilege}),
    "trusted process as a listed user": (lambda: native(user="llama"), {"native": {"trustedExecutables": [
        {"executable": "python3"}], "users": ["llama"]}}, PYTHON, {K.any_change, K.native_executable}),
    "least-privilege container on loopback": (lambda: container(ports=[{"containerPort": 8080}]), BOXES, NO_FACTS,
                                              {K.any_change}),
    "container with a read-only volume": (lambda: container(volumes=[{"source": "site", "target": "/srv"}]), BOXES,
                                          NO_FACTS, {K.any_change}),
    "container published on 0.0.0.0": (lambda: container(ports=[{"containerPort": 8080, "hostIP": "0.0.0.0"}]),
                                       BOXES | {"network": {"exposed": [{"address": "0.0.0.0"}]}}, NO_FACTS,
                                       {K.any_change, K.exposure}),
    "container on the host network": (lambda: container(network="host"),
                                      {"containers": {"images": ["busybox:*"], "hostNetwork": True}}, NO_FACTS,
                                      {K.any_change, K.exposure, K.privilege}),
    "container as root": (lambda: container(security={"user": "0:0"}),
                          {"containers": {"images": ["busybox:*"], "root": True}}, NO_FACTS, {K.any_change, K.privilege}),
    "container with a capability": (lambda: container(security={"capabilities": ["NET_BIND_SERVICE"]}),
                                    {"containers": {"images": ["busybox:*"], "capabilities": ["NET_BIND_SERVICE"]}},
                                    NO_FACTS, {K.any_change, K.privilege}),
    "container with a writable rootfs": (lambda: container(security={"readOnlyRootFilesystem": False}),
                                         {"containers": {"images": ["busybox:*"], "writableRootFilesystem": True}},
                                         NO_FACTS, {K.any_change, K.privilege}),
    "container with a writable volume": (
        lambda: container(volumes=[{"source": "data", "target": "/data", "readOnly": False}]),
        {"containers": {"images": ["busybox:*"], "writableVolumes": True, "volumeRoots": ["/srv"]}},
        NO_FACTS, {K.any_change, K.privilege}),
}


@pytest.mark.parametrize("case", KIND_CASES, ids=list(KIND_CASES))
def test_each_launch_is_the_kinds_of_change_it_is(case: str) -> None:
    make, spec, facts, kinds = KIND_CASES[case]
    launch = make()
    assert judge(launch, policy(**spec), facts).approved  # allowed outright while no approval is required
    engine_trusted = judge(launch, policy(**spec), facts).reasons[0].rule == "native.trustedEngines"
    assert kinds_of(launch, engine_trusted) == kinds


@pytest.mark.parametrize("kind", list(ApprovalKind), ids=[kind.value for kind in ApprovalKind])
@pytest.mark.parametrize("case", KIND_CASES, ids=list(KIND_CASES))
def test_a_launch_waits_for_a_person_only_when_the_policy_requires_its_kind(case: str, kind: ApprovalKind) -> None:
    make, spec, facts, kinds = KIND_CASES[case]
    verdict = judge(make(), policy(**spec, approvals={"required": [kind.value]}),
                    Facts(facts.executables, spec_hash=HASH))
    if kind not in kinds:
        assert verdict.decision is Decision.approve
        assert "approvals.required" not in rules_of(verdict.reasons)
        return
    assert verdict.decision is Decision.needs_approval and not verdict.approved
    (reason,) = verdict.reasons
    assert reason.rule == "approvals.required"
    assert reason.message == (f"{kind.value} needs a person's approval: run `reconciler approve web --spec-hash "
                              f"{HASH[:12]}` (or `reconciler deny`)")


def test_every_kind_the_launch_is_and_the_policy_requires_is_named_once_sorted() -> None:
    make, spec, facts, _ = KIND_CASES["trusted process on 0.0.0.0"]
    required = ["Privilege", "Exposure", "NativeExecutable", "AnyChange"]
    verdict = judge(make(), policy(**spec, approvals={"required": required}), Facts(facts.executables, spec_hash=HASH))
    assert verdict.reasons[0].message.startswith("AnyChange, Exposure, NativeExecutable needs a person's approval")


def test_an_approval_of_the_exact_spec_starts_it_naming_who_and_when() -> None:
    spec = TRUSTS_PYTHON | {"approvals": {"required": ["NativeExecutable"]}}
    verdict = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH, approval=approval(covering=HASH)))
    assert verdict.decision is Decision.approve
    assert verdict.reasons == (
        Reason("native.trustedExecutables", "'python3' (/usr/bin/python3 -> /usr/bin/python3.11) is trusted by "
                                            "Policy/workstation"),
        Reason("approvals.required", f"NativeExecutable: approved by alice at 2026-01-02T03:04:05+00:00 for spec {HASH[:12]}"))


def test_an_approval_of_another_spec_still_waits_and_says_the_spec_changed() -> None:
    spec = TRUSTS_PYTHON | {"approvals": {"required": ["AnyChange"]}}
    verdict = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH, approval=approval(covering=OTHER_HASH)))
    assert verdict.decision is Decision.needs_approval
    (reason,) = verdict.reasons
    assert f"reconciler approve web --spec-hash {HASH[:12]}" in reason.message
    assert f"(approved by alice at 2026-01-02T03:04:05+00:00) was for spec {OTHER_HASH[:12]}, and the spec has changed since" in reason.message


def test_a_deny_of_another_spec_does_not_deny_the_new_one() -> None:
    spec = TRUSTS_PYTHON | {"approvals": {"required": ["AnyChange"]}}
    verdict = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH, approval=approval(Answer.deny, OTHER_HASH)))
    assert verdict.decision is Decision.needs_approval
    assert "the spec has changed since" in verdict.reasons[0].message


def test_a_deny_of_the_exact_spec_denies() -> None:
    spec = TRUSTS_PYTHON | {"approvals": {"required": ["AnyChange"]}}
    verdict = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH, approval=approval(Answer.deny, HASH)))
    assert verdict.decision is Decision.deny
    assert verdict.reasons == (Reason("approvals.answer", "this spec was denied by alice at 2026-01-02T03:04:05+00:00"),)


@pytest.mark.parametrize(("make", "spec", "facts", "rule"), [
    (lambda: native(), {"native": {"trustedExecutables": [{"executable": "node"}]}}, PYTHON, "native.trustedExecutables"),
    (lambda: native(host="0.0.0.0", port=8080), TRUSTS_PYTHON, PYTHON, "network.exposed"),
    (lambda: native(), TRUSTS_PYTHON, Facts((FOUND, REAL), memory=memory(20, 0)), "resources.memory"),
    (lambda: container(security={"user": "0"}), BOXES, NO_FACTS, "containers.root"),
], ids=["untrusted", "exposed", "overcommit", "root container"])
def test_an_approval_never_rescues_what_a_rule_denies(make: Any, spec: dict, facts: Facts, rule: str) -> None:
    rules = policy(**spec, approvals={"required": ["AnyChange"]})
    verdict = judge(make(), rules, Facts(facts.executables, spec_hash=HASH, approval=approval(covering=HASH), memory=facts.memory))
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == [rule]


def test_an_unknown_spec_hash_is_never_covered() -> None:
    spec = TRUSTS_PYTHON | {"approvals": {"required": ["AnyChange"]}}
    waiting = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=None, approval=approval(covering=HASH)))
    assert waiting.decision is Decision.needs_approval
    assert "approve web once its spec is known" in waiting.reasons[0].message
    assert judge(native(), policy(**spec), PYTHON).decision is Decision.needs_approval


def test_a_persons_deny_holds_even_where_the_policy_asks_for_no_answer() -> None:
    """`reconciler deny NAME` must never be silently ignored: it refuses that spec whatever the policy requires."""
    spec = TRUSTS_PYTHON | {"approvals": {"required": ["Exposure"]}}
    verdict = judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH, approval=approval(Answer.deny, HASH)))
    assert verdict.decision is Decision.deny and verdict.reasons[0].rule == "approvals.answer"
    assert judge(native(), policy(**spec), Facts((FOUND, REAL), spec_hash=HASH, approval=approval(Answer.approve, HASH))).approved


def test_no_approval_is_needed_by_default_or_to_remove() -> None:
    assert judge(native(), policy(**TRUSTS_PYTHON), PYTHON).approved
    stop = decide(Action(WEB, Verb.delete, "gone", 1), policy(approvals={"required": ["AnyChange"]}), Facts(spec_hash=HASH))
    assert stop.approved


# -- network exposure of native servers ------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "127.255.255.254", "::1", "localhost"])
def test_loopback_listeners_need_no_rule(host: str) -> None:
    verdict = judge(native(host=host, port=8080), policy(**TRUSTS_PYTHON), PYTHON)
    assert verdict.approved and rules_of(verdict.reasons) == ["native.trustedExecutables"]


def test_a_launch_that_listens_nowhere_needs_no_rule() -> None:
    launch = native()
    assert launch.listen is None and judge(launch, policy(**TRUSTS_PYTHON), PYTHON).approved


@pytest.mark.parametrize(("host", "shown", "where"), [
    ("0.0.0.0", "0.0.0.0", "every interface"), ("::", "::", "every interface"), ("0:0::0", "::", "every interface"),
    ("192.168.1.5", "192.168.1.5", "192.168.1.5"), ("fe80::1", "fe80::1", "fe80::1"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:7f00:1"),  # an IPv4-mapped address is not loopback to this Python
])
def test_beyond_loopback_is_denied_by_default(host: str, shown: str, where: str) -> None:
    for rules in (policy(**TRUSTS_PYTHON), None):
        verdict = judge(native(host=host, port=8080), rules, PYTHON)
        assert verdict.decision is Decision.deny
        (exposed,) = [reason for reason in verdict.reasons if reason.rule == "network.exposed"]
        source = SOURCE if rules else "default policy"
        assert exposed.message == (
            f"the server would listen on {shown} ({where}), beyond this host; {source} allows loopback only there: "
            f"add {{address: {shown!r}, ports: [8080]}} to spec.network.exposed to expose it")


@pytest.mark.parametrize(("host", "exposed"), [
    ("0.0.0.0", "0.0.0.0"), ("::", "::"), ("0:0::0", "::"), ("::", "0:0::0"), ("192.168.1.5", "192.168.1.5"),
])
def test_a_listed_address_is_allowed(host: str, exposed: str) -> None:
    rules = policy(**TRUSTS_PYTHON, network={"exposed": [{"address": exposed}]})
    assert judge(native(host=host, port=8080), rules, PYTHON).approved


@pytest.mark.parametrize(("host", "exposed"), [
    ("0.0.0.0", "::"), ("::", "0.0.0.0"), ("0.0.0.0", "192.168.1.5"), ("192.168.1.6", "192.168.1.5"),
    ("192.168.1.5", "0.0.0.0"),  # exposing every interface is not a wildcard over single addresses
])
def test_another_address_is_not_allowed_by_a_listed_one(host: str, exposed: str) -> None:
    rules = policy(**TRUSTS_PYTHON, network={"exposed": [{"address": exposed}]})
    verdict = judge(native(host=host, port=8080), rules, PYTHON)
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == ["network.exposed"]


def test_an_exposed_address_may_be_limited_to_some_ports() -> None:
    rules = policy(**TRUSTS_PYTHON, network={"exposed": [{"address": "0.0.0.0", "ports": [8080, 8443]}]})
    assert judge(native(host="0.0.0.0", port=8080), rules, PYTHON).approved
    assert judge(native(host="0.0.0.0", port=8443), rules, PYTHON).approved
    denied = judge(native(host="0.0.0.0", port=8081), rules, PYTHON)
    assert denied.decision is Decision.deny and "ports: [8081]" in denied.reasons[0].message


def test_entries_for_one_address_add_up() -> None:
    rules = policy(**TRUSTS_PYTHON, network={"exposed": [{"address": "0.0.0.0", "ports": [8080]},
                                                          {"address": "0.0.0.0", "ports": [9090]}]})
    assert judge(native(host="0.0.0.0", port=9090), rules, PYTHON).approved
    assert not judge(native(host="0.0.0.0", port=7070), rules, PYTHON).approved


@pytest.mark.parametrize("host", ["example.com", "my-host", "LOCALHOST", "127.1", "0", " 127.0.0.1"])
def test_a_host_that_is_not_an_ip_address_is_denied_with_a_clear_message(host: str) -> None:
    rules = policy(**TRUSTS_PYTHON, network={"exposed": [{"address": "0.0.0.0"}, {"address": "::"}]})
    verdict = judge(native(host=host, port=8080), rules, PYTHON)
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == ["network.exposed"]
    assert verdict.reasons[0].message == (f"the server would listen on {host!r}, which is not an IP address: "
                                          "the policy judges addresses, give one")


def test_an_engine_bind_is_judged_like_a_process_bind() -> None:
    engines = {"native": {"trustedEngines": ["llama.cpp"]}}
    assert judge(native(**LLAMA), policy(**engines)).approved
    denied = judge(native(**LLAMA | {"host": "0.0.0.0"}), policy(**engines))
    assert denied.decision is Decision.deny and rules_of(denied.reasons) == ["network.exposed"]
    assert judge(native(**LLAMA | {"host": "0.0.0.0"}),
                 policy(**engines, network={"exposed": [{"address": "0.0.0.0", "ports": [8080]}]})).approved


@pytest.mark.parametrize("engine", ["llama.cpp", "vllm"])
@pytest.mark.parametrize("args", [["--host", "0.0.0.0"], ["--host=0.0.0.0"], ["--port", "9"], ["--port=9"]])
def test_an_engine_bind_cannot_be_moved_through_args(engine: str, args: list[str]) -> None:
    """The last flag wins in every engine: a --host/--port in args would move the server past what the gate judged."""
    spec = LLAMA | {"engine": engine} | ({"resources": {"gpus": {"count": 1}}} if engine == "vllm" else {})
    with pytest.raises(ValueError, match=f"spec.args may not set {args[0].split('=')[0]}"):
        native(**spec, args=args)


def test_container_ports_beyond_loopback_need_exposing_too() -> None:
    launch = container(ports=[{"containerPort": 80, "hostPort": 8080, "hostIP": "::"}])
    denied = judge(launch, policy(**BOXES))
    assert denied.decision is Decision.deny and rules_of(denied.reasons) == ["network.exposed"]
    assert denied.reasons[0].message.startswith("published port 8080 would listen on :: (every interface)")
    assert judge(launch, policy(**BOXES, network={"exposed": [{"address": "::", "ports": [8080]}]})).approved
    assert not judge(launch, policy(**BOXES, network={"exposed": [{"address": "::", "ports": [80]}]})).approved


# -- sha256 pins -----------------------------------------------------------------------------------------------

def pinned(*entries: tuple[str, str | None]) -> Policy:
    return policy(native={"trustedExecutables": [{"executable": name} | ({"sha256": pin} if pin else {})
                                                 for name, pin in entries]})


@pytest.mark.parametrize("name", ["python3", FOUND, REAL])
def test_a_pin_that_matches_the_resolved_file_is_trusted(name: str) -> None:
    verdict = judge(native(), pinned((name, PIN_A)), Facts((FOUND, REAL), digests={REAL: PIN_A}))
    assert verdict.approved
    assert verdict.reasons[0].message == (f"'python3' (/usr/bin/python3 -> /usr/bin/python3.11) is trusted by {SOURCE} "
                                          f"(sha256 {PIN_A[:12]}… matches its pin)")


def test_a_pin_that_does_not_match_is_denied_naming_both_digests() -> None:
    verdict = judge(native(), pinned(("python3", PIN_A)), Facts((FOUND, REAL), digests={REAL: PIN_B}))
    assert verdict.decision is Decision.deny
    (reason,) = verdict.reasons
    assert reason.rule == "native.trustedExecutables"
    assert reason.message == (f"'python3' (/usr/bin/python3 -> /usr/bin/python3.11) has sha256 {PIN_B}, not the pinned "
                              f"{PIN_A} of {SOURCE}: the file changed since it was trusted; pin the new digest if the "
                              "change is yours")


@pytest.mark.parametrize("facts", [
    Facts((FOUND, REAL)),  # no digest at all
    Facts((FOUND, REAL), digests={FOUND: PIN_A}),  # a digest of the symlink's path, not of the file it resolves to
    Facts(()),  # the executable was not found
], ids=["no digest", "digest of another entry", "not found"])
def test_a_pin_without_the_resolved_files_digest_is_denied(facts: Facts) -> None:
    verdict = judge(native(), pinned(("python3", PIN_A)), facts)
    assert verdict.decision is Decision.deny
    assert "could not be read to check its sha256" in verdict.reasons[0].message
    assert f"not the pinned {PIN_A}" in verdict.reasons[0].message


@pytest.mark.parametrize(("entries", "digest", "trusted"), [
    ((("python3", None), ("python3", PIN_A)), PIN_A, True),
    ((("python3", None), ("python3", PIN_A)), PIN_B, False),  # an unpinned entry does not override the pin
    ((("python3", PIN_A), ("python3", None)), PIN_B, False),  # in either order
    ((("python3", None), (REAL, PIN_A)), PIN_B, False),  # nor does one naming the command beside one naming its file
    (((FOUND, None), ("python3", PIN_A)), PIN_B, False),
    ((("python3", PIN_A), ("python3", PIN_B)), PIN_B, True),  # two pins: either digest (e.g. while upgrading)
    ((("node", PIN_A), ("python3", None)), PIN_B, True),  # a pin on another executable does not apply
], ids=["pin and bare, match", "bare then pinned", "pinned then bare", "bare name, pinned file",
        "bare path, pinned name", "two pins", "pin on another"])
def test_a_pin_governs_whatever_else_trusts_the_same_file(entries: tuple, digest: str, trusted: bool) -> None:
    verdict = judge(native(), pinned(*entries), Facts((FOUND, REAL), digests={REAL: digest}))
    assert verdict.approved is trusted


def test_a_trusted_engine_is_not_held_to_a_pin_on_its_server() -> None:
    """Documents current behaviour: engine trust covers whatever server the reconciler renders."""
    rules = policy(native={"trustedEngines": ["llama.cpp"], "trustedExecutables": [{"executable": "/opt/llama-server",
                                                                                      "sha256": PIN_A}]})
    assert judge(native(**LLAMA), rules, Facts(("/opt/llama-server",), digests={"/opt/llama-server": PIN_B})).approved


def test_a_changed_file_makes_what_runs_stop() -> None:
    reasons = running_denial(native(), pinned(("python3", PIN_A)), Facts((FOUND, REAL), digests={REAL: PIN_B}))
    assert rules_of(reasons) == ["native.trustedExecutables"] and PIN_B in reasons[0].message
    assert running_denial(native(), pinned(("python3", PIN_A)), Facts((FOUND, REAL), digests={REAL: PIN_A})) == ()


def test_an_exec_check_program_is_held_to_its_pin() -> None:
    rules = policy(native={"trustedExecutables": [{"executable": "node"}, {"executable": FOUND, "sha256": PIN_A}]})
    launch = render_launch(workload(command=["node"]).spec, ("node",), (), "/w", "/usr/bin/node")
    facts = Facts(("/usr/bin/node", "/usr/bin/node"), (FOUND, FOUND, FOUND), digests={FOUND: PIN_B})
    assert judge(launch, rules, facts).decision is Decision.deny


def test_an_exec_check_program_whose_pin_matches_is_trusted() -> None:
    rules = policy(native={"trustedExecutables": [{"executable": "node"}, {"executable": FOUND, "sha256": PIN_A}]})
    launch = render_launch(workload(command=["node"]).spec, ("node",), (), "/w", "/usr/bin/node")
    facts = Facts(("/usr/bin/node", "/usr/bin/node"), (FOUND, FOUND, FOUND), digests={FOUND: PIN_A})
    assert judge(launch, rules, facts).approved


# -- containers.requireDigest ----------------------------------------------------------------------------------

def test_require_digest_refuses_a_tag_naming_the_fix() -> None:
    rules = policy(containers={"images": ["busybox:*", "busybox@*"], "requireDigest": True})
    verdict = judge(container(), rules)
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == ["containers.requireDigest"]
    assert verdict.reasons[0].message == ("image busybox:1.36 is not pinned by digest and Policy/workstation requires "
                                          "it: write it as name@sha256:<digest>")


@pytest.mark.parametrize("image", [f"busybox@{IMAGE_DIGEST}", f"busybox:1.36@{IMAGE_DIGEST}"])
def test_require_digest_accepts_a_pinned_image(image: str) -> None:
    rules = policy(containers={"images": ["busybox:*", "busybox@*"], "requireDigest": True})
    assert judge(container(image=image), rules).approved


def test_require_digest_is_off_by_default_and_audited_in_audit_mode() -> None:
    assert judge(container(), policy(containers={"images": ["busybox:*"]})).approved
    audited = judge(container(), policy(mode="audit", containers={"images": ["busybox:*"], "requireDigest": True}))
    assert audited.approved and rules_of(audited.audited) == ["containers.requireDigest"]


def test_require_digest_and_an_unlisted_image_are_two_reasons() -> None:
    verdict = judge(container(), policy(containers={"images": ["alpine:*"], "requireDigest": True}))
    assert rules_of(verdict.reasons) == ["containers.images", "containers.requireDigest"]


# -- memory ----------------------------------------------------------------------------------------------------

def test_a_start_that_fits_is_approved_without_a_memory_reason() -> None:
    verdict = judge(native(), policy(**TRUSTS_PYTHON), Facts((FOUND, REAL), memory=memory(4, 4)))
    assert verdict.approved and "resources.memory" not in rules_of(verdict.reasons)


def test_exceeding_with_what_others_commit_is_denied_with_the_numbers() -> None:
    verdict = judge(native(), policy(**TRUSTS_PYTHON), Facts((FOUND, REAL), memory=memory(4, 6)))
    assert verdict.decision is Decision.deny
    assert verdict.reasons == (Reason("resources.memory", (
        "memory limit 4.0 GiB with 6.0 GiB committed by running workloads exceeds the 9.0 GiB that may be committed "
        "(10% of 10.0 GiB RAM is kept for the system); Policy/workstation does not overcommit: stop another workload "
        "first")),)


@pytest.mark.parametrize("committed", [0, 3])
def test_more_than_the_host_may_commit_does_not_fit_at_all(committed: float) -> None:
    verdict = judge(native(), policy(**TRUSTS_PYTHON), Facts((FOUND, REAL), memory=memory(9.5, committed)))
    assert verdict.decision is Decision.deny
    assert verdict.reasons[0].message == ("memory limit 9.5 GiB does not fit this host at all: 9.0 GiB may be committed "
                                          "(10% of 10.0 GiB RAM is kept for the system)")


def test_overcommit_allows_any_amount() -> None:
    rules = policy(**TRUSTS_PYTHON, resources={"overcommit": True})
    for use in (memory(4, 6), memory(20, 0), memory(20, 20)):
        assert judge(native(), rules, Facts((FOUND, REAL), memory=use)).approved


def test_a_start_that_commits_nothing_known_is_never_judged() -> None:
    use = MemoryUse(0, "no memory limit or model footprint", 50 * GIB, 10 * GIB)  # already over: still not judged
    assert judge(native(), policy(**TRUSTS_PYTHON), Facts((FOUND, REAL), memory=use)).approved
    assert memory_problem(use, ResourcePolicy(), SOURCE) is None


@pytest.mark.parametrize(("reserve", "total", "budget"), [
    (0.0, 1000, 1000), (0.1, 1000, 900), (0.5, 1000, 500), (0.25, 4 * GIB, 3 * GIB), (0.999, 1000, 1),
])
def test_the_budget_edge_is_inclusive(reserve: float, total: int, budget: int) -> None:
    rules = ResourcePolicy(memory_reserve=reserve)
    for committed in (0, budget // 2):
        assert memory_problem(MemoryUse(budget - committed, "m", committed, total), rules, SOURCE) is None
        assert memory_problem(MemoryUse(budget - committed + 1, "m", committed, total), rules, SOURCE) is not None


def test_the_reserve_is_shown_as_a_share_of_ram() -> None:
    message = memory_problem(MemoryUse(GIB, "m", 0, GIB), ResourcePolicy(memory_reserve=0.25), SOURCE)
    assert message == "m does not fit this host at all: 0.8 GiB may be committed (25% of 1.0 GiB RAM is kept for the system)"


@pytest.mark.parametrize("reserve", [-0.1, 1, 1.5])
def test_a_reserve_outside_zero_to_one_is_refused(reserve: float) -> None:
    with pytest.raises(ValidationError):
        policy(resources={"memoryReserve": reserve})


def test_the_default_policy_keeps_a_tenth() -> None:
    assert PolicySpec().resources.memory_reserve == 0.1 and not PolicySpec().resources.overcommit


def test_memory_is_judged_for_containers_too() -> None:
    verdict = judge(container(), policy(**BOXES), Facts(memory=memory(4, 6)))
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == ["resources.memory"]


# -- running_denial: what runs under a tightened policy --------------------------------------------------------

@pytest.mark.parametrize(("launch", "before", "after", "rules"), [
    (lambda: native(), TRUSTS_PYTHON, {"native": {"trustedExecutables": [{"executable": "node"}]}},
     ["native.trustedExecutables"]),
    (lambda: native(), TRUSTS_PYTHON, None, ["native.trustedExecutables"]),
    (lambda: native(**LLAMA), {"native": {"trustedEngines": ["llama.cpp"]}}, {"native": {"trustedEngines": ["vllm"]}},
     ["native.trustedExecutables"]),
    (lambda: container(), BOXES, {"containers": {"images": ["alpine:*"]}}, ["containers.images"]),
    (lambda: container(), BOXES, None, ["containers.images"]),
    (lambda: native(host="0.0.0.0", port=8080), TRUSTS_PYTHON | {"network": {"exposed": [{"address": "0.0.0.0"}]}},
     TRUSTS_PYTHON, ["network.exposed"]),
    (lambda: native(host="0.0.0.0", port=8080), TRUSTS_PYTHON | {"network": {"exposed": [{"address": "0.0.0.0"}]}},
     TRUSTS_PYTHON | {"network": {"exposed": [{"address": "0.0.0.0", "ports": [9090]}]}}, ["network.exposed"]),
    (lambda: container(ports=[{"containerPort": 8080, "hostIP": "0.0.0.0"}]),
     BOXES | {"network": {"exposed": [{"address": "0.0.0.0"}]}}, BOXES, ["network.exposed"]),
    (lambda: container(security={"user": "0"}), {"containers": {"images": ["busybox:*"], "root": True}},
     {"containers": {"images": ["busybox:*"]}}, ["containers.root"]),
    (lambda: native(env={"LD_LIBRARY_PATH": CUDA}), {"native": TRUSTS_PYTHON["native"] | ALLOWS_CUDA}, TRUSTS_PYTHON,
     ["native.loaderEnvironment"]),
], ids=["trust removed", "policy removed", "engine trust removed", "image removed", "container policy removed",
        "exposure removed", "exposed port narrowed", "container exposure removed", "root removed",
        "loader variable removed"])
def test_a_tightened_policy_refuses_what_runs(launch: Any, before: dict, after: dict | None, rules: list[str]) -> None:
    running = launch()
    facts = PYTHON if isinstance(running, LaunchSpec) else NO_FACTS
    assert running_denial(running, policy(**before), facts) == ()
    reasons = running_denial(running, policy(**after) if after is not None else None, facts)
    assert rules_of(reasons) == rules
    assert reasons == judge(running, policy(**after) if after is not None else None, facts).reasons


def test_approvals_and_memory_never_stop_what_runs() -> None:
    rules = policy(**TRUSTS_PYTHON, approvals={"required": ["AnyChange", "NativeExecutable"]})
    facts = Facts((FOUND, REAL), spec_hash=HASH, approval=approval(Answer.deny, OTHER_HASH), memory=memory(20, 20))
    assert judge(native(), rules, facts).decision is Decision.deny  # a new start would be refused for memory
    assert running_denial(native(), rules, facts) == ()
    assert running_denial(native(), rules, Facts((FOUND, REAL), spec_hash=HASH)) == ()


def test_a_tightened_health_check_trust_stops_what_runs() -> None:
    reasons = running_denial(native(), policy(**TRUSTS_PYTHON), Facts((FOUND, REAL), ("touch", "/usr/bin/touch")))
    assert rules_of(reasons) == ["native.trustedExecutables"] and "health check program 'touch'" in reasons[0].message


# -- ports below 1024 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("launch", [lambda: native(host="127.0.0.1", port=80), lambda: native(**LLAMA | {"port": 53}),
                                    lambda: container(ports=[{"containerPort": 8080, "hostPort": 22}])],
                         ids=["native on loopback", "engine", "published container port"])
def test_a_port_below_1024_is_denied_even_on_loopback(launch: Any) -> None:
    rules = policy(**BOXES, native={"trustedExecutables": [{"executable": "python3"}], "trustedEngines": ["llama.cpp"]})
    verdict = judge(launch(), rules, PYTHON)
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == ["network.privilegedPorts"]
    assert "below 1024: the system's services live there" in verdict.reasons[0].message
    assert "to spec.network.privilegedPorts" in verdict.reasons[0].message


def test_a_listed_privileged_port_is_allowed_and_only_that_one() -> None:
    rules = policy(**TRUSTS_PYTHON, network={"privilegedPorts": [80]})
    assert judge(native(host="127.0.0.1", port=80), rules, PYTHON).approved
    assert rules_of(judge(native(host="127.0.0.1", port=81), rules, PYTHON).reasons) == ["network.privilegedPorts"]
    assert judge(native(host="127.0.0.1", port=1024), policy(**TRUSTS_PYTHON), PYTHON).approved


# -- variables that make a trusted program load other code -------------------------------------------------------

@pytest.mark.parametrize("variable", ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "GCONV_PATH", "PYTHONPATH",
                                      "PYTHONHOME", "NODE_OPTIONS", "BASH_ENV"])
def test_a_variable_that_loads_other_code_into_a_trusted_program_is_denied(variable: str) -> None:
    verdict = judge(native(env={variable: "/tmp/evil", "PYTHONUNBUFFERED": "1"}), policy(**TRUSTS_PYTHON), PYTHON)
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == ["native.loaderEnvironment"]
    assert f"env {variable} would make the program load code" in verdict.reasons[0].message
    assert "/tmp/evil" not in verdict.reasons[0].message
    assert f"spec.native.loaderEnvironment of {SOURCE}" in verdict.reasons[0].message


def test_a_trusted_engine_is_held_to_the_same_rule() -> None:
    verdict = judge(native(**LLAMA, env={"LD_PRELOAD": "/tmp/evil.so"}), policy(native={"trustedEngines": ["llama.cpp"]}))
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == ["native.loaderEnvironment"]


def test_a_loader_variable_is_allowed_with_exactly_the_listed_value() -> None:
    rules = policy(native=TRUSTS_PYTHON["native"] | ALLOWS_CUDA)
    assert judge(native(env={"LD_LIBRARY_PATH": CUDA}), rules, PYTHON).approved
    other = judge(native(env={"LD_LIBRARY_PATH": CUDA + ":/tmp/evil"}), rules, PYTHON)
    assert other.decision is Decision.deny and rules_of(other.reasons) == ["native.loaderEnvironment"]
    preload = judge(native(env={"LD_LIBRARY_PATH": CUDA, "LD_PRELOAD": CUDA}), rules, PYTHON)
    assert [reason.message.split(" would ")[0] for reason in preload.reasons] == ["env LD_PRELOAD"]


def test_ordinary_variables_and_containers_are_not_loader_variables() -> None:
    assert judge(native(env={"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4", "LOAD": "x"}), policy(**TRUSTS_PYTHON),
                 PYTHON).approved
    assert judge(container(env={"LD_PRELOAD": "/x.so"}), policy(**BOXES)).approved  # it loads inside the container


# -- the Policy model ------------------------------------------------------------------------------------------

def test_trusted_engines_refuse_the_process_engine() -> None:
    with pytest.raises(ValidationError, match="the process engine runs any command: trust its executables one by one"):
        policy(native={"trustedEngines": ["llama.cpp", "process"]})
    assert NativePolicy(trusted_engines=["llama.cpp", "vllm"]).trusted_engines[1].value == "vllm"


@pytest.mark.parametrize(("written", "canonical"), [
    ("0:0::0", "::"), ("::0", "::"), ("0.0.0.0", "0.0.0.0"), ("FE80::1", "fe80::1"), ("::ffff:192.168.1.5", "::ffff:c0a8:105"),
])
def test_exposed_addresses_are_canonical(written: str, canonical: str) -> None:
    assert ExposedAddress(address=written).address == canonical
    assert policy(network={"exposed": [{"address": written}]}).spec.network.exposed[0].address == canonical


@pytest.mark.parametrize("address", ["localhost", "example.com", "256.0.0.1", "127.1", "", "0.0.0.0/0", "::1::"])
def test_an_exposed_address_must_be_an_ip_address(address: str) -> None:
    with pytest.raises(ValidationError, match="expected an IP address"):
        policy(network={"exposed": [{"address": address}]})


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_exposed_ports_are_ports(port: int) -> None:
    with pytest.raises(ValidationError):
        policy(network={"exposed": [{"address": "0.0.0.0", "ports": [port]}]})


@pytest.mark.parametrize("pin", ["A" * 64, "a" * 63, "a" * 65, "g" * 64, "sha256:" + "a" * 64, ""])
def test_a_pin_is_64_lower_case_hex_digits(pin: str) -> None:
    with pytest.raises(ValidationError):
        TrustedExecutable(executable="python3", sha256=pin)
    assert TrustedExecutable(executable="python3", sha256=PIN_A).sha256 == PIN_A


@pytest.mark.parametrize(("spec", "fragment"), [
    ({"mode": "warn"}, "mode"), ({"approvals": {"required": ["Everything"]}}, "required"),
    ({"native": {"trustedExecutables": [{"executable": ""}]}}, "executable"),
    ({"containers": {"volumeRoots": ["srv"]}}, "volume roots must be absolute"),
])
def test_invalid_policies_are_refused(spec: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        policy(**spec)


def test_the_policy_defaults_are_least_privilege() -> None:
    spec = PolicySpec()
    assert spec.mode.value == "enforce" and spec.approvals.required == [] and spec.network.exposed == []
    assert spec.native.trusted_executables == [] and spec.native.trusted_engines == []
    rules = spec.containers
    assert rules.images == [] and rules.networks == [] and rules.capabilities == [] and rules.volume_roots == []
    assert not (rules.require_digest or rules.pull or rules.host_network or rules.writable_volumes
                or rules.writable_root_filesystem or rules.root)


@pytest.mark.parametrize("variable", ["HOST", "PORT", "CONFIG_FILE", "LLAMA_ARG_HOST", "host"])
def test_an_engine_bind_cannot_be_moved_through_the_environment(variable: str) -> None:
    with pytest.raises(ValueError, match=f"spec.env may not set {variable}"):
        native(**LLAMA, env={variable: "0.0.0.0"})


@pytest.mark.parametrize("flag", ["--config", "--config_file=/tmp/x.yaml"])
def test_an_engine_bind_cannot_be_moved_through_a_config_file(flag: str) -> None:
    with pytest.raises(ValueError, match="spec.args may not set --config"):
        native(**LLAMA, args=[flag])


@pytest.mark.parametrize("args", [["--hos", "0.0.0.0"], ["--po=9"], ["--conf", "/tmp/x.yaml"]])
def test_an_engine_bind_cannot_be_moved_by_an_abbreviated_flag(args: list[str]) -> None:
    """Python engines parse flags with argparse, which takes any unambiguous prefix: `--hos 0.0.0.0` bound
    llama-cpp-python's server on every interface past the gate."""
    with pytest.raises(ValueError, match="spec.args may not set"):
        native(**LLAMA, args=args)


@pytest.mark.parametrize("args", [["--routes", "/etc/shadow"], ["--rou=/etc/shadow"], ["--ho", "0.0.0.0"]])
def test_the_gateway_reads_only_the_routes_the_reconciler_writes(args: list[str]) -> None:
    with pytest.raises(ValueError, match="spec.args may not set"):
        workload(engine="gateway", port=8000, args=args)


USER_CASES = {  # spec.user, the policy's native rules beyond trusting python3 -> the refusal's rule and words, if any
    "dynamic by default": (None, {}, None),
    "root refused by default": ("root", {}, ("native.runAsRoot", "spec.user root would run it with every privilege "
                                             "of the reconciler, and Policy/workstation does not allow root")),
    "root listed as a user is still refused": ("root", {"users": ["root"]}, ("native.runAsRoot", "does not allow root")),
    "root allowed": ("root", {"runAsRoot": True}, None),
    "runAsRoot does not admit other users": ("llama", {"runAsRoot": True},
                                              ("native.users", "user 'llama' is not in spec.native.users")),
    "a listed user": ("llama", {"users": ["llama"]}, None),
}


@pytest.mark.parametrize("case", USER_CASES, ids=list(USER_CASES))
def test_whom_a_native_workload_runs_as_is_the_policys_to_allow(case: str) -> None:
    user, rules, refusal = USER_CASES[case]
    launch = native(**({"user": user} if user else {}))
    verdict = judge(launch, policy(native={"trustedExecutables": [{"executable": "python3"}], **rules}), PYTHON)
    if refusal is None:
        assert verdict.approved, verdict.reasons
        return
    rule, words = refusal
    assert not verdict.approved and [reason.rule for reason in verdict.reasons] == [rule]
    assert words in verdict.reasons[0].message


def test_a_container_names_its_user_in_its_security_not_spec_user() -> None:
    with pytest.raises(ValidationError, match="spec.user is for runtime 'native'.*spec.security.user"):
        workload(runtime="container", image="busybox:1", user="llama")
