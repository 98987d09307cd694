"""Properties of the gate over generated Workloads and Policies, rendered as the reconciler renders them.

Deterministic (derandomize=True). RECONCILER_FUZZ_EXAMPLES sets the examples per property (default 200).
Generated specs go through the real model (Workload.model_validate; the ones it refuses are skipped) and the real
render functions (render_launch, render_container), then decide(). Each oracle below is written from the policy's
meaning, not from the gate's code.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
from datetime import datetime, timezone
from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reconciler.api.approval import Answer, Approval
from reconciler.api.container import CAPABILITIES
from reconciler.api.kinds import Policy, Workload, spec_hash
from reconciler.api.launch import BindMount, ContainerLaunch, LaunchSpec, render_launch
from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.base.sizes import GIB
from reconciler.diff.containers import render_container
from reconciler.diff.engines import Blocked, EngineCommand, engine_command
from reconciler.diff.plan import Action, Verb
from reconciler.gate.containers import image_matches
from reconciler.gate.resources import MemoryUse
from reconciler.gate.verdict import Decision, Facts, Verdict, decide
from reconciler.observe.docker_engine import ImageFacts
from reconciler.observe.host import EngineFacts
from tests.test_fuzz import ENV_NAMES, HOST_IPS, HOSTILE, USERS

EXAMPLES = int(os.environ.get("RECONCILER_FUZZ_EXAMPLES", "200"))
PROPERTY = settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
WEB = ResourceKey("Workload", "web")
ENGINES = EngineFacts(llama_server="/opt/llama-server", llama_cpp_python="/usr/bin/python3", vllm="/opt/vllm")
PIN_A, PIN_B = "a" * 64, "b" * 64
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


# -- generated specs -------------------------------------------------------------------------------------------
# Each relaxation or oddity is drawn now and then, not half the time: a spec is then often within what a policy
# allows, so the properties see approved starts and not only refusals (the `event`s show the mix).

def rarely(strategy: st.SearchStrategy[Any], default: Any = None) -> st.SearchStrategy[Any]:
    """`default` three times in four, else a value of `strategy`."""
    return st.sampled_from([False, False, False, True]).flatmap(lambda drawn: strategy if drawn else st.just(default))


PROGRAMS = ["python3", "python3", "/usr/bin/python3", "node", "/usr/bin/node", "/tmp/evil/python3", "llama-server",
            "/opt/llama-server", "sh", "./run"]
HOSTS = st.one_of(st.sampled_from(["127.0.0.1", "127.0.0.5", "::1", "localhost"]), HOST_IPS,
                  st.sampled_from(["LOCALHOST", "example.com", "127.1", "0", "::1%lo", "::ffff:127.0.0.1"]))
# --host/--port among an engine's args fail validation (test_gate_policy.py): generated specs with them are skipped
ARGS = st.lists(st.one_of(st.sampled_from(["-m", "http.server", "--bind", "0.0.0.0", "--port", "8080", "--host", "-c"]),
                          HOSTILE), max_size=3)
ENV = st.one_of(st.sampled_from([{}, {"PATH": "/tmp/evil"}, {"PATH": "/usr/bin:/bin"}, {"LD_PRELOAD": "/tmp/evil/x.so"}]),
                st.dictionaries(ENV_NAMES, HOSTILE, max_size=2))
IMAGES = ["busybox:1.36", "busybox:1.36", f"busybox@sha256:{'c' * 64}", "ghcr.io/x/y", "ghcr.io/x/y/z:1", "busybox:5000/evil:1"]
UNPRIVILEGED = ["1000:1000", "101:101", "65534:65534"]


@st.composite
def native_specs(draw: st.DrawFn) -> dict[str, Any]:
    engine = draw(st.sampled_from(["process", "process", "llama.cpp", "vllm"]))
    spec: dict[str, Any] = {"args": draw(ARGS), "env": draw(ENV)}
    if draw(st.booleans()):
        spec["host"] = draw(HOSTS)
    if check := draw(rarely(st.sampled_from(PROGRAMS))):
        spec["health"] = {"exec": {"command": [check]}}
    if memory := draw(rarely(st.sampled_from(["1Gi", "8Gi", "20Gi"]))):
        spec["resources"] = {"memory": memory}
    if engine == "process":
        spec["command"] = [draw(st.sampled_from(PROGRAMS)), *draw(st.lists(HOSTILE, max_size=2))]
        if port := draw(st.one_of(st.none(), st.sampled_from([8080, 8081]), st.integers(1, 65535))):
            spec["port"] = port
        return spec
    spec |= {"engine": engine, "model": "tiny", "port": draw(st.sampled_from([8080, 8081]))}
    if executable := draw(st.sampled_from([None, None, "/opt/llama-server", "/opt/vllm", "/tmp/evil/server"])):
        spec["llamaCpp" if engine == "llama.cpp" else "vllm"] = {"executable": executable}
    if engine == "vllm":
        spec["resources"] = spec.get("resources", {}) | {"gpus": {"count": 1}}
    return spec


@st.composite
def container_specs(draw: st.DrawFn) -> dict[str, Any]:
    ports = draw(st.lists(st.fixed_dictionaries({"containerPort": st.sampled_from([80, 8080, 53])}, optional={
        "hostPort": st.integers(1, 65535), "hostIP": st.one_of(st.just("127.0.0.1"), HOST_IPS),
        "protocol": st.sampled_from(["tcp", "udp"])}), max_size=2))
    network = draw(st.sampled_from([None, None, "bridge", "my-net", "Bridge", "default"] + ([] if ports else ["none", "host"])))
    security = {key: value for key, value in {
        "capabilities": draw(rarely(st.lists(st.sampled_from(sorted(CAPABILITIES) + ["cap_net_bind_service"]),
                                             min_size=1, max_size=2))),
        "readOnlyRootFilesystem": draw(rarely(st.just(False))),
        "user": draw(st.one_of(st.none(), st.sampled_from(UNPRIVILEGED), rarely(USERS))),
    }.items() if value is not None}
    volumes = draw(rarely(st.lists(st.fixed_dictionaries(
        {"source": st.sampled_from(["./site", "site/../..", "/", "/etc", "/var/run/docker.sock", "/srv/x"]),
         "target": st.sampled_from(["/data", "/", "/etc"])}, optional={"readOnly": st.booleans()}), min_size=1, max_size=2), []))
    return {"runtime": "container", "image": draw(st.sampled_from(IMAGES)), "ports": ports, "security": security,
            "volumes": volumes, "imagePullPolicy": draw(st.sampled_from(["IfNotPresent", "Never"]))} | (
        {"network": network} if network else {})


def workload(spec: dict[str, Any]) -> Workload:
    return Workload.model_validate({"apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "web"}, "spec": spec})


def valid(spec: dict[str, Any]) -> Workload:
    """The Workload, or this example is skipped: a spec the model refuses never reaches the gate."""
    try:
        return workload(spec)
    except ValidationError:
        assume(False)
        raise  # unreachable: assume(False) ends the example


def render(resource: Workload, image: ImageFacts | None) -> LaunchSpec | ContainerLaunch | Blocked:
    """What the reconciler would start: volume sources resolved beside the spec, every engine installed."""
    spec = resource.spec
    if spec.runtime.value == "container":
        volumes = tuple(BindMount(source=posixpath.normpath(posixpath.join("/srv/desired-state", volume.source)),
                                  target=volume.target, read_only=volume.read_only) for volume in spec.volumes)
        return render_container(spec, image, volumes, ())
    command = engine_command(spec, "/models/tiny.gguf", ENGINES)
    assert isinstance(command, EngineCommand)
    return render_launch(spec, command.command, command.args, "/w", None, (), None, command.executable_from_spec)


def resolutions(draw: st.DrawFn, written: str, env: dict[str, str]) -> tuple[str, ...]:
    """Where a program might be found (and what a symlink there points at), as observed before the start: a bare
    name on the spec's own PATH where it sets one."""
    base = posixpath.basename(written)
    if "/" in written:
        found = posixpath.normpath(posixpath.join("/w", written))
    elif "PATH" in env:
        found = posixpath.join(env["PATH"].split(":")[0] or "/w", base)
    else:
        found = draw(st.sampled_from([f"/usr/bin/{base}", f"/usr/bin/{base}", f"/tmp/evil/{base}"]))
    return draw(st.sampled_from([(found, found), (found,), (found, "/usr/bin/python3.11"), (), (found, "/tmp/evil/x")]))


IMAGE_FACTS = st.one_of(st.builds(ImageFacts, id=st.just("sha256:" + "e" * 64),
                                  user=st.sampled_from([None, None, "1000:1000", "0", "root", "1000:0", "app"])),
                        rarely(st.none(), ImageFacts(id="sha256:" + "e" * 64, user=None)))


@st.composite
def started(draw: st.DrawFn) -> tuple[Workload, LaunchSpec | ContainerLaunch, Facts]:
    """A Workload, its launch and the facts observed for it (no approval, no memory)."""
    resource = valid(draw(native_specs() if draw(st.booleans()) else container_specs()))
    launch = render(resource, draw(IMAGE_FACTS))
    assume(not isinstance(launch, Blocked))  # a missing image with imagePullPolicy Never starts nothing
    if isinstance(launch, ContainerLaunch):
        return resource, launch, Facts()
    executables = resolutions(draw, launch.command[0], launch.env)
    health = resource.spec.health
    checks = (health.exec.command[0], *resolutions(draw, health.exec.command[0], launch.env)) if health and health.exec else ()
    digest = draw(st.sampled_from([PIN_A, PIN_B, None]))
    digests = {executables[-1]: digest} if executables and digest else {}
    return resource, launch, Facts(executables, checks, digests)


# -- generated policies ----------------------------------------------------------------------------------------

TRUSTED_NAMES = ["python3", "/usr/bin/python3", "/usr/bin/python3.11", "node", "/usr/bin/node", "llama-server",
                 "/opt/llama-server", "/opt/vllm", "sh"]
IMAGE_PATTERNS = ["**", "busybox:*", "busybox:1.36", "busybox@*", "ghcr.io/x/y", "ghcr.io/*"]
KINDS = ["NativeExecutable", "Exposure", "Privilege", "AnyChange"]


def subset(values: list[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(values), unique=True, max_size=len(values))


PRESETS = [[{"executable": "python3"}, {"executable": "/opt/llama-server"}],
           [{"executable": "python3", "sha256": PIN_A}, {"executable": "/opt/llama-server", "sha256": PIN_A}],
           [{"executable": "python3"}, {"executable": "/usr/bin/python3.11", "sha256": PIN_B}, {"executable": "node"}]]
trusted_executables = st.one_of(st.sampled_from(PRESETS), st.lists(
    st.fixed_dictionaries({"executable": st.sampled_from(TRUSTED_NAMES)}, optional={"sha256": st.sampled_from([PIN_A, PIN_B])}),
    min_size=1, max_size=5))
engines = st.sampled_from([["llama.cpp", "vllm"], ["llama.cpp"], ["vllm"], []])
images = st.one_of(st.just(["**"]), st.lists(st.sampled_from(IMAGE_PATTERNS), min_size=1, max_size=3))


@st.composite
def trusting_policies(draw: st.DrawFn) -> Policy:
    """Trusts some executables, engines, images and networks; relaxes nothing else; exposes nothing."""
    spec = {"native": {"trustedExecutables": draw(trusted_executables), "trustedEngines": draw(engines)},
            "containers": {"images": draw(images), "networks": draw(st.sampled_from([["bridge"], ["bridge", "my-net"], [], ["my-net"]])),
                           "volumeRoots": draw(subset(["/srv", "/srv/desired-state/site"])),
                           "requireDigest": draw(rarely(st.just(True), False))},
            "approvals": {"required": draw(subset(KINDS))}, "mode": "enforce"}
    return Policy.model_validate({"metadata": {"name": "workstation"}, "spec": spec})


exposed = st.fixed_dictionaries({"address": st.sampled_from(["0.0.0.0", "::", "192.168.1.5", "fe80::1"])},
                                optional={"ports": st.lists(st.sampled_from([80, 8080, 8081, 53]), max_size=2)})


@st.composite
def any_policy_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Every part of a policy (but its mode and approvals), each relaxation drawn."""
    return {
        "native": {"trustedExecutables": draw(trusted_executables), "trustedEngines": draw(engines)},
        "network": {"exposed": draw(st.lists(exposed, max_size=3))},
        "containers": {"images": draw(images), "networks": draw(subset(["bridge", "Bridge", "my-net", "default"])),
                       "volumeRoots": draw(subset(["/", "/srv", "/etc"])),
                       "capabilities": draw(subset(sorted(CAPABILITIES)[:3] + ["NET_BIND_SERVICE", "SYS_ADMIN"])),
                       **{flag: draw(st.booleans()) for flag in ("pull", "hostNetwork", "writableVolumes",
                                                                 "writableRootFilesystem", "root")},
                       "requireDigest": draw(rarely(st.just(True), False))},
        "resources": {"memoryReserve": draw(st.sampled_from([0, 0.1, 0.5])), "overcommit": draw(st.booleans())},
    }


memory_uses = rarely(st.builds(MemoryUse, st.sampled_from([0, GIB, 8 * GIB, 20 * GIB]), st.just("memory limit"),
                               st.sampled_from([0, 4 * GIB]), st.just(10 * GIB)))


# -- oracles ---------------------------------------------------------------------------------------------------

def loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def start(launch: LaunchSpec | ContainerLaunch, rules: Policy | None, facts: Facts, verb: Verb) -> Verdict:
    return decide(Action(WEB, verb, "not running", 1, launch), rules, facts)


def assert_native_within(launch: LaunchSpec, facts: Facts, rules: Policy) -> None:
    """An approved native start under a policy that relaxes nothing: a trusted program (its pin matching), a
    trusted check program, and a server on loopback only."""
    trusted = rules.spec.native
    engine = launch.engine != "process" and not launch.executable_from_spec and launch.engine in {
        engine.value for engine in trusted.trusted_engines}
    if not engine:
        bare_on_spec_path = "PATH" in launch.env and "/" not in launch.command[0]
        names = {*facts.executables, *(() if bare_on_spec_path else (launch.command[0],))}
        entries = [entry for entry in trusted.trusted_executables if entry.executable in names]
        assert entries, f"{launch.command[0]} ({facts.executables}) is not trusted"
        pins = {entry.sha256 for entry in entries if entry.sha256}
        if pins:
            assert facts.executables and facts.digests.get(facts.executables[-1]) in pins, "a pin was not checked"
    if facts.check_executables:
        assert set(facts.check_executables) & {entry.executable for entry in trusted.trusted_executables}
    assert launch.listen is None or loopback(launch.listen[0]), f"listens on {launch.listen}"
    assert launch.listen is None or launch.listen[1] >= 1024, f"listens on the system's port {launch.listen[1]}"


def not_root(user: str) -> bool:
    parts = user.split(":")
    return len(parts) == 2 and all(part.isdigit() and int(part) > 0 for part in parts)


def assert_container_within(launch: ContainerLaunch, rules: Policy) -> None:
    """An approved container under a policy that relaxes nothing: least privilege, listed networks, loopback ports."""
    allowed = rules.spec.containers
    assert launch.capabilities == (), launch.capabilities
    assert not_root(launch.effective_user), launch.effective_user
    assert launch.read_only_root_filesystem
    assert all(volume.read_only for volume in launch.volumes)
    assert all(any(posixpath.commonpath([volume.source, root]) == root for root in allowed.volume_roots)
               for volume in launch.volumes)
    assert launch.network != "host" and (launch.network == "none" or launch.network in allowed.networks), launch.network
    assert all(loopback(port.host_ip) and port.host_port >= 1024 for port in launch.ports), launch.ports
    assert launch.image_id is not None  # no pull
    assert any(image_matches(launch.image, pattern) for pattern in allowed.images)
    assert not allowed.require_digest or "@sha256:" in launch.image


# -- properties ------------------------------------------------------------------------------------------------

@PROPERTY
@given(started(), st.sampled_from([Verb.create, Verb.recreate]))
def test_the_default_policy_starts_nothing(case: tuple, verb: Verb) -> None:
    """No Policy: no native program (whatever it is, wherever found) and no container (whatever image) starts."""
    _, launch, facts = case
    verdict = start(launch, None, facts, verb)
    assert verdict.decision is Decision.deny and verdict.reasons and verdict.audited == ()


@PROPERTY
@given(started(), trusting_policies(), st.sampled_from([Verb.create, Verb.recreate]))
def test_a_policy_that_only_trusts_grants_no_privilege_or_exposure(case: tuple, rules: Policy, verb: Verb) -> None:
    """A policy that trusts programs, engines, images and networks but relaxes nothing never approves a start that
    is privileged, listens or publishes beyond loopback, or runs an untrusted (or altered pinned) program."""
    resource, launch, facts = case
    verdict = start(launch, rules, facts, verb)
    approved = verdict.approved or start(launch, rules, Facts(facts.executables, facts.check_executables, facts.digests,
                                                              spec_hash(resource), Approval(
                                                                  name="web", spec_hash=spec_hash(resource),
                                                                  answer=Answer.approve, by="alice", at=AT)), verb).approved
    event(f"{'approved' if approved else 'refused'} {launch.engine}")
    if not approved:
        return
    if isinstance(launch, ContainerLaunch):
        assert_container_within(launch, rules)
    else:
        assert_native_within(launch, facts, rules)


def test_the_trusting_policy_property_is_not_vacuous() -> None:
    """It would hold trivially if such a policy approved nothing: one of each runtime is approved."""
    rules = Policy.model_validate({"metadata": {"name": "workstation"}, "spec": {
        "native": {"trustedExecutables": [{"executable": "python3"}], "trustedEngines": ["llama.cpp"]},
        "containers": {"images": ["busybox:*"], "networks": ["bridge"]}}})
    box = render(workload({"runtime": "container", "image": "busybox:1.36", "ports": [{"containerPort": 8080}]}),
                 ImageFacts(id="sha256:" + "e" * 64, user=None))
    assert start(box, rules, Facts(), Verb.create).approved
    chat = render(workload({"engine": "llama.cpp", "model": "tiny", "port": 8080}), None)
    assert start(chat, rules, Facts(), Verb.create).approved
    web = render(workload({"command": ["python3"], "port": 8080}), None)
    assert start(web, rules, Facts(("/usr/bin/python3",)), Verb.create).approved


APPROVALS = st.sampled_from(["approve", "none", "approve another spec", "deny", "deny another spec"])


def answered(kind: str, covering: str) -> Approval | None:
    if kind == "none":
        return None
    return Approval(name="web", spec_hash=covering if "another" not in kind else "0" * 64,
                    answer=Answer.deny if kind.startswith("deny") else Answer.approve, by="alice", at=AT)


@PROPERTY
@given(started(), any_policy_specs(), subset(KINDS[:3]), APPROVALS, st.booleans(), memory_uses,
       st.sampled_from([Verb.create, Verb.recreate]))
def test_any_change_required_means_nothing_starts_without_an_approval_of_its_exact_spec(
    case: tuple, spec: dict, other_kinds: list[str], answer: str, hash_known: bool, memory: MemoryUse | None, verb: Verb,
) -> None:
    """Whatever else a policy allows, with AnyChange required no start is approved unless a person approved its
    exact spec hash; a person's deny of that spec denies; and an approval never rescues what a rule refuses."""
    resource, launch, observed = case
    digest = spec_hash(resource) if hash_known else None
    approval = answered(answer, spec_hash(resource))
    facts = Facts(observed.executables, observed.check_executables, observed.digests, digest, approval, memory)
    held = Policy.model_validate({"metadata": {"name": "workstation"},
                                  "spec": spec | {"approvals": {"required": ["AnyChange", *other_kinds]}}})
    verdict = start(launch, held, facts, verb)
    covered = approval is not None and approval.covers(digest)
    if verdict.approved:
        assert covered and approval.answer is Answer.approve and approval.spec_hash == digest
    base = start(launch, Policy.model_validate({"metadata": {"name": "workstation"}, "spec": spec}),
                 Facts(observed.executables, observed.check_executables, observed.digests, memory=memory), verb)
    assert base.decision is not Decision.needs_approval
    if covered and approval.answer is Answer.deny:
        expected = Decision.deny
    elif not base.approved:
        expected = Decision.deny
    else:
        expected = Decision.approve if covered else Decision.needs_approval
    assert verdict.decision is expected, (verdict, base)
    event(f"{launch.engine} {expected.value}")
    if expected is Decision.deny and not base.approved:  # the rules' reasons are all given, not only the person's
        assert set(base.reasons) <= set(verdict.reasons)


@PROPERTY
@given(started(), any_policy_specs(), subset(KINDS), APPROVALS, memory_uses)
def test_audit_mode_refuses_only_a_persons_deny_and_records_what_enforce_would_refuse(
    case: tuple, spec: dict, kinds: list[str], answer: str, memory: MemoryUse | None,
) -> None:
    """Audit mode starts whatever enforce would refuse or hold for a person, recording those reasons first in
    `audited` (the rules' refusals in enforce's order, then the missing approval); only a person's deny stands."""
    resource, launch, observed = case
    approval = answered(answer, spec_hash(resource))
    facts = Facts(observed.executables, observed.check_executables, observed.digests, spec_hash(resource), approval, memory)
    spec = spec | {"approvals": {"required": kinds}}
    enforced = start(launch, Policy.model_validate({"metadata": {"name": "w"}, "spec": spec}), facts, Verb.create)
    audited = start(launch, Policy.model_validate({"metadata": {"name": "w"}, "spec": spec | {"mode": "audit"}}),
                    facts, Verb.create)
    event(f"enforce {enforced.decision.value}")
    persons_deny = (enforced.decision is Decision.deny and enforced.reasons[0].rule == "approvals.answer")
    if persons_deny:
        assert audited == enforced
        return
    assert audited.approved
    if enforced.approved:
        assert audited == enforced
    else:
        assert audited.audited[:len(enforced.reasons)] == enforced.reasons
        assert audited.reasons[-1].rule == "mode"
