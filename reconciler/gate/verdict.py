"""The policy gate: every planned change is approved, denied or held for a person, with reasons. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from reconciler.api.approval import Answer, Approval
from reconciler.api.launch import ContainerLaunch, LaunchSpec
from reconciler.api.policy import Policy, PolicyMode, PolicySpec
from reconciler.api.status import Listen, ObservedExposure
from reconciler.diff.plan import Action, Verb
from reconciler.gate import approvals, native, network, resources
from reconciler.gate.containers import container_problems
from reconciler.gate.resources import MemoryUse

POLICY_DENIED = "PolicyDenied"  # the failure reason of a workload stopped because a tightened policy refuses it
EXPOSURE_OBSERVED = "ExposureObserved"  # ... because it was seen listening where the policy does not allow
DEFAULT_POLICY = PolicySpec()  # trusts no native executable and allows no image: nothing runs until a Policy says so


class Decision(str, Enum):
    approve = "approve"
    deny = "deny"
    needs_approval = "needs-approval"


@dataclass(frozen=True)
class Reason:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    audited: tuple[Reason, ...] = ()  # audit mode: what enforce would have refused, though it is approved

    @property
    def approved(self) -> bool:
        return self.decision is Decision.approve


@dataclass(frozen=True)
class Facts:
    """What the gate judges besides the action and the policy, observed beforehand; absent facts are not judged."""

    executables: tuple[str, ...] = ()  # the file the launch runs: as found on PATH, then with symlinks resolved
    check_executables: tuple[str, ...] = ()  # an exec health check's program: as written, found, resolved
    digests: Mapping[str, str] = field(default_factory=dict)  # SHA-256 of executables that a pin names
    spec_hash: str | None = None
    approval: Approval | None = None  # the person's latest answer about this workload
    memory: MemoryUse | None = None
    exposure: ObservedExposure | None = None  # an earlier run seen listening where the policy did not allow then


NO_FACTS = Facts()


def decide(action: Action, policy: Policy | None, facts: Facts = NO_FACTS) -> Verdict:
    """Judge one action. Removing and recording are always allowed; a start must pass every rule."""
    if action.verb not in (Verb.create, Verb.recreate) or action.launch is None:
        return Verdict(Decision.approve, (Reason("no-side-effects", "records or removes only: nothing is started"),))
    spec, source = governing(policy)
    granted, problems, engine_trusted = _judge(action.launch, spec, source, policy is not None, facts)
    exposure = facts.exposure
    if exposure is not None and isinstance(action.launch, LaunchSpec) and exposure.launch_digest == action.launch.digest:
        problems += [Reason(network.OBSERVED_RULE, f"this launch's last run: {message}")
                     for message in network.observed_problems(exposure, spec.network, source)]
    if facts.memory is not None:
        overcommit = resources.memory_problem(facts.memory, spec.resources, source)
        if overcommit:
            problems.append(Reason(resources.RULE, overcommit))
    approval = facts.approval if facts.approval is not None and facts.approval.name == action.key.name else None
    if approval is not None and approval.covers(facts.spec_hash) and approval.answer is Answer.deny:
        # a person's refusal stands in every mode, whether or not the policy asked for an answer
        return Verdict(Decision.deny, (Reason(approvals.ANSWER_RULE, f"this spec was {approval.describe()}"), *problems))
    needed = [kind for kind in approvals.kinds_of(action.launch, engine_trusted) if kind in spec.approvals.required]
    answer, why = approvals.approval_answer(action.key.name, sorted(needed), approval, facts.spec_hash) \
        if needed else (None, "")
    if needed and answer is Answer.approve:
        granted.append(Reason(approvals.RULE, why))
    waiting = (Reason(approvals.RULE, why),) if needed and answer is None else ()
    if spec.mode is PolicyMode.audit and (problems or waiting):
        return Verdict(Decision.approve, (*granted, Reason("mode", f"{source} audits: applied regardless")),
                       (*problems, *waiting))
    if problems:
        return Verdict(Decision.deny, tuple(problems))
    if waiting:
        return Verdict(Decision.needs_approval, waiting)
    return Verdict(Decision.approve, tuple(granted))


def running_denial(launch: LaunchSpec | ContainerLaunch, policy: Policy | None, facts: Facts = NO_FACTS) -> tuple[Reason, ...]:
    """Why what runs now would be refused by the policy in force (a tightened one): it must then stop.
    Approvals and memory are not re-judged: it was admitted, and a pending approval only holds new starts."""
    spec, source = governing(policy)
    if spec.mode is PolicyMode.audit:
        return ()
    return tuple(_judge(launch, spec, source, policy is not None, facts)[1])


def listen_findings(pid: int, listening: tuple[Listen, ...], launch: LaunchSpec,
                    policy: Policy | None) -> network.ListenFindings:
    """What a running native workload was seen listening on, judged by the policy in force; in enforce mode a
    socket it refuses stops the workload, as a declared one would have kept it from starting."""
    spec, source = governing(policy)
    return network.judge_listens(pid, listening, launch.listen, spec.network, source, spec.mode is PolicyMode.enforce,
                                 container_host=launch.container_listen)


def refused_only_for_listening(verdict: Verdict) -> bool:
    """A start refused only because the same launch was seen listening where it may not: an observed exposure."""
    return not verdict.approved and bool(verdict.reasons) and \
        all(reason.rule == network.OBSERVED_RULE for reason in verdict.reasons)


def governing(policy: Policy | None) -> tuple[PolicySpec, str]:
    """The rules in force and how reasons name them."""
    return (policy.spec, f"Policy/{policy.name}") if policy else (DEFAULT_POLICY, "default policy")


def _judge(
    launch: LaunchSpec | ContainerLaunch, spec: PolicySpec, source: str, has_policy: bool, facts: Facts
) -> tuple[list[Reason], list[Reason], bool]:
    """(what grants it, what refuses it, whether a trusted engine rather than a trusted executable runs)."""
    if isinstance(launch, ContainerLaunch):
        problems = [Reason(rule, message) for rule, message in container_problems(launch, spec, source)]
        return [Reason("containers.images", f"image {launch.image} is allowed by {source}")], problems, False
    rule, message, trusted = native.native_trust(launch, spec.native, source, has_policy, facts.executables, facts.digests)
    granted, problems = ([Reason(rule, message)], []) if trusted else ([], [Reason(rule, message)])
    problems += [Reason(native.LOADER_RULE, message) for message in native.loader_problems(launch.env, spec.native, source)]
    problems += [Reason(rule, message) for rule, message in native.user_problems(launch.user, spec.native, source)]
    check = native.check_trust(facts.check_executables, spec.native, source, has_policy, facts.digests)
    if check:
        problems.append(Reason(native.TRUST_RULE, check))
    if launch.listen is not None:
        problems += [Reason(rule, message) for rule, message in
                     network.listen_problems(*launch.listen, spec.network, source, "the server")]
    bridge = launch.container_listen and network.local_containers_problem(launch.container_listen, spec.network, source)
    if bridge:
        problems.append(Reason(network.LOCAL_CONTAINERS_RULE, bridge))
    return granted, problems, rule == "native.trustedEngines"
