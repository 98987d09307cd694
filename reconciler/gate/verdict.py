"""The policy gate: every planned change is approved, denied or held for a human, with reasons. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from reconciler.api.kinds import Policy, PolicySpec
from reconciler.diff.plan import Action, Verb

_TRUST_RULE = "native.trustedExecutables"
DEFAULT_POLICY = PolicySpec()  # trusts no native executable: nothing runs until a Policy says so


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


def decide(action: Action, policy: Policy | None, executables: tuple[str, ...] = ()) -> Verdict:
    """Judge one action. Removing and recording are always allowed; starting a process must be trusted.

    `executables` are the files the launch would run (as found, and with symlinks resolved): trust
    names either, or command[0] exactly as written.
    """
    spec = policy.spec if policy else DEFAULT_POLICY
    source = f"Policy/{policy.name}" if policy else "default policy"
    if action.verb not in (Verb.create, Verb.recreate) or action.launch is None:
        return Verdict(Decision.approve, (Reason("no-side-effects", "records or removes only: nothing is started"),))
    engine = action.launch.engine
    if engine != "process" and engine in {trusted.value for trusted in spec.native.trusted_engines}:
        return Verdict(Decision.approve, (Reason("native.trustedEngines", f"engine {engine} is trusted by {source}"),))
    executable = action.launch.command[0]
    trusted = {entry.executable for entry in spec.native.trusted_executables}
    runs = [path for path in dict.fromkeys(executables) if path != executable]
    shown = repr(executable) + (f" ({' -> '.join(runs)})" if runs else "")
    if {executable, *executables} & trusted:
        return Verdict(Decision.approve, (Reason(_TRUST_RULE, f"{shown} is trusted by {source}"),))
    hint = (f"add it to spec.native.trustedExecutables of {source}" if policy
            else "write a Policy that lists it in spec.native.trustedExecutables")
    return Verdict(Decision.deny, (Reason(_TRUST_RULE, f"native executable {shown} is not trusted by {source}: {hint}"),))
