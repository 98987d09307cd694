"""Where each workload runs (local, hosted, unavailable) and its Runtime Decision Record.

Observation (whether a secret reference resolves, the host profile) happens here; the decisions are the
pure `decide_placement` and `runtime_decision_record`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconciler.api.approval import Answer, Approval
from reconciler.api.fallback import SecretRef
from reconciler.api.host import HostProfile, host_summary
from reconciler.api.kinds import Runtime, Workload, WorkloadSpec
from reconciler.api.policy import Policy, PolicySpec
from reconciler.api.status import Placement
from reconciler.base.sizes import gib
from reconciler.diff.engines import Blocked, Rendered
from reconciler.diff.footprint import ModelView
from reconciler.diff.resources import budget
from reconciler.drive.users import DYNAMIC_UIDS, own_user, reconciler_is_root
from reconciler.gate.key_access import PathOwner, key_unreadable
from reconciler.gate.placement import PlacementDecision, decide_placement
from reconciler.gate.verdict import Decision, Reason, Verdict, governing
from reconciler.observe.processes import RunAs
from reconciler.record.decision_record import DecisionInputs, ModelFacts, runtime_decision_record

# What no waiting fixes: this host lacks the device, the engine or the memory (a busy GPU or a missing model
# file is waited for, or fetched, locally: never a reason to send data elsewhere).
CAPABILITY_BLOCKS = frozenset({
    "NoCompatibleGPU", "InsufficientGPUMemory", "EngineNotInstalled", "InsufficientMemory", "NoVariantFits",
    "AccelerationUnavailable",
})


@dataclass(frozen=True)
class SecretFacts:
    resolves: bool
    file_mode: int | None = None
    way: tuple[PathOwner, ...] = ()  # the key file's folders from / down, then the file: who may pass each
    unreadable: str | None = None  # why a running gateway cannot read the key file


def secret_facts(reference: SecretRef) -> SecretFacts:
    """Whether a key reference resolves, without reading the key: the reconciler never holds its value."""
    if reference.env is not None:
        return SecretFacts(bool(os.environ.get(reference.env)))
    assert reference.file is not None
    try:
        found = os.stat(reference.file)
    except OSError:
        return SecretFacts(False)
    return SecretFacts(stat.S_ISREG(found.st_mode) and found.st_size > 0, stat.S_IMODE(found.st_mode),
                       _way(reference.file))


def _way(file: str) -> tuple[PathOwner, ...]:
    """The owners and modes the gateway's open of `file` passes (links resolved, as its open resolves them)."""
    real = Path(os.path.realpath(file))
    way = []
    for path in (*reversed(real.parents), real):
        try:
            found = os.stat(path)
        except OSError:
            return ()
        way.append(PathOwner(str(path), found.st_uid, found.st_gid, found.st_mode))
    return tuple(way)


def local_blocker(rendered: Rendered, commitment: tuple[int, str], memory_total: int, rules: PolicySpec) -> Blocked | None:
    """Why this host cannot run the workload at all, if it cannot."""
    if rendered.blocked is not None and rendered.blocked.reason in CAPABILITY_BLOCKS:
        return rendered.blocked
    wanted, what = commitment
    limit = budget(memory_total, rules.resources)
    if memory_total and not rules.resources.overcommit and wanted > limit:
        return Blocked("InsufficientMemory", f"{what}; this host lets workloads commit {gib(limit)} "
                                             f"({gib(memory_total)} RAM less the policy's reserve)")
    return None


def place(
    workload: Workload, spec_hash: str, blocker: Blocked | None, policy: Policy | None, approval: Approval | None,
    gateways: tuple[RunAs, ...] = (),
) -> tuple[PlacementDecision, SecretFacts | None]:
    """`gateways`: whom the running gateways run as, who must read the key."""
    fallback = workload.spec.fallback
    secret = secret_facts(fallback.api_key) if fallback is not None else None
    if fallback is not None and fallback.api_key.file is not None and secret is not None and secret.resolves:
        secret = replace(secret, unreadable=key_unreadable(fallback.api_key.file, secret.way, gateways))
    rules, source = governing(policy)
    decision = decide_placement(
        fallback, blocker, rules.hosted, workload=workload.name,
        consent_approved=consented(approval, spec_hash), secret_resolves=secret.resolves if secret else None,
        policy_source=source, secret_unreadable=secret.unreadable if secret else None,
    )
    return decision, secret


def consented(consent: Approval | None, spec_hash: str) -> bool:
    """A person consented to hosting this exact spec (`reconciler approve NAME --hosted`)."""
    return consent is not None and consent.hosted and consent.covers(spec_hash) and consent.answer is Answer.approve


def consent_verdict(decision: PlacementDecision, approval: Approval | None, spec_hash: str) -> Verdict | None:
    """Hosting that waits only for a person: pending, or refused when the person said no to this spec."""
    if not decision.needs_consent:
        return None
    if approval is not None and approval.hosted and approval.covers(spec_hash) and approval.answer is Answer.deny:
        return Verdict(Decision.deny, (Reason("hosted.consent", f"hosted fallback {approval.describe()}"),))
    return Verdict(Decision.needs_approval, decision.reasons[1:])


def workload_decision_record(
    workload: Workload, decision: PlacementDecision, secret: SecretFacts | None, policy: Policy | None,
    profile: HostProfile | None, model: ModelFacts | None, *, channel: str, state_dir: Path,
    evidence_file: Path, log_file: str | None, endpoint: str | None, consented: bool,
) -> dict[str, Any]:
    spec = workload.spec
    rules, source = governing(policy)
    total = profile.memory.total if profile else 0
    return runtime_decision_record(DecisionInputs(
        workload=workload.name, runtime=spec.runtime.value,
        engine=spec.image if spec.image else spec.engine.value,
        host_summary=host_summary(profile) if profile else "not observed",
        placement=decision, update_channel=channel, state_dir=str(state_dir), evidence_file=str(evidence_file),
        log_file=log_file, endpoint=endpoint if decision.placement is Placement.local else None,
        gpus_wanted=spec.resources.gpus.wanted, gpu_min_memory_bytes=spec.resources.gpus.min_memory,
        model=model, memory_limit_bytes=spec.resources.memory,
        memory_budget_bytes=budget(total, rules.resources) if total else None,
        fallback=spec.fallback, hosted=rules.hosted, policy_source=source,
        consent_approved=consented, secret_resolves=secret.resolves if secret else None,
        secret_file_mode=secret.file_mode if secret else None, secret_unreadable=secret.unreadable if secret else None,
        runs_as=runs_as(spec),
    ))


def runs_as(spec: WorkloadSpec) -> str | None:
    """Whom the driver will run a native workload as (a container's user is in its enforcement)."""
    if spec.runtime is not Runtime.native:
        return None
    if not reconciler_is_root():
        return f"as the reconciler's own user {own_user()} (the reconciler is not root)"
    if spec.user is None:
        return (f"as a dynamic user of its own (a uid of {DYNAMIC_UIDS.start}-{DYNAMIC_UIDS.stop - 1} kept for it), "
                "with no capabilities")
    return "as root (the Policy allows it)" if spec.user == "root" else f"as user {spec.user} (the Policy allows it)"


def model_facts(workload: Workload, view: ModelView | None) -> ModelFacts | None:
    """What a workload's decision record says about its model: where, how big, the estimate, the choice."""
    if workload.spec.model is None:
        return None
    presence, selection = (view.presence, view.selection) if view else (None, None)
    footprint = selection.estimate if selection else None
    return ModelFacts(
        workload.spec.model, str(presence.path) if presence else None, presence.size if presence else None,
        estimate=f"{footprint.explanation} on {footprint.device}" if footprint else None,
        selection=selection.message if selection else None,
    )
