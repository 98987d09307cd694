"""The policy gate: every planned change is approved, denied or held for a human, with reasons. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from reconciler.api.kinds import Policy, PolicySpec
from reconciler.diff.plan import Action, Verb
from reconciler.api.launch import ContainerLaunch, LaunchSpec
from reconciler.gate.containers import container_problems

_TRUST_RULE = "native.trustedExecutables"
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

    @property
    def approved(self) -> bool:
        return self.decision is Decision.approve


def decide(
    action: Action, policy: Policy | None, executables: tuple[str, ...] = (), check_executables: tuple[str, ...] = ()
) -> Verdict:
    """Judge one action. Removing and recording are always allowed; starting a process must be trusted.

    `executables` are the files the launch would run (as found, and with symlinks resolved): trust
    names either, or command[0] exactly as written. A trusted engine covers the server the reconciler
    renders, not a binary the spec names. An exec health check runs a program too: it must be trusted
    the same way (`check_executables`: its command[0] as written, found, resolved).
    """
    spec = policy.spec if policy else DEFAULT_POLICY
    source = f"Policy/{policy.name}" if policy else "default policy"
    if action.verb not in (Verb.create, Verb.recreate) or action.launch is None:
        return Verdict(Decision.approve, (Reason("no-side-effects", "records or removes only: nothing is started"),))
    if isinstance(action.launch, ContainerLaunch):
        problems = container_problems(action.launch, spec.containers, source)
        if problems:
            return Verdict(Decision.deny, tuple(Reason(rule, message) for rule, message in problems))
        return Verdict(Decision.approve, (Reason("containers.images", f"image {action.launch.image} is allowed by {source}"),))
    trusted = {entry.executable for entry in spec.native.trusted_executables}
    reasons = []
    if check_executables and not set(check_executables) & trusted:
        reasons.append(_untrusted(check_executables, "health check program", source, policy is not None))
    engine = action.launch.engine
    if engine != "process" and not action.launch.executable_from_spec and \
            engine in {trusted_engine.value for trusted_engine in spec.native.trusted_engines}:
        granted = Reason("native.trustedEngines", f"engine {engine} is trusted by {source}")
    elif {*_as_written(action.launch), *executables} & trusted:
        granted = Reason(_TRUST_RULE, f"{_shown((action.launch.command[0], *executables))} is trusted by {source}")
    else:
        granted = None
        reasons.insert(0, _untrusted((action.launch.command[0], *executables), "native executable", source, policy is not None))
    if reasons:
        return Verdict(Decision.deny, tuple(reasons))
    assert granted is not None
    return Verdict(Decision.approve, (granted,))


def _as_written(launch: LaunchSpec) -> tuple[str, ...]:
    """command[0] as written counts only when the spec does not choose the PATH it is looked up in."""
    return () if "PATH" in launch.env and "/" not in launch.command[0] else (launch.command[0],)


def _shown(names: tuple[str, ...]) -> str:
    written, *found = dict.fromkeys(names)
    return repr(written) + (f" ({' -> '.join(found)})" if found else "")


def _untrusted(names: tuple[str, ...], what: str, source: str, has_policy: bool) -> Reason:
    hint = (f"add it to spec.native.trustedExecutables of {source}" if has_policy
            else "write a Policy that lists it in spec.native.trustedExecutables")
    return Reason(_TRUST_RULE, f"{what} {_shown(names)} is not trusted by {source}: {hint}")
