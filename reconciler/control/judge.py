"""Gate and placement for one planned action: the facts the gate needs are observed here, then judged.

A start is judged with its executables' digests, the person's approval and the memory it commits; what
runs is judged again against the policy in force (a tightened policy stops it); a workload this host
cannot run is placed elsewhere or nowhere, before anything is started or fetched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from reconciler.api.approval import Approval
from reconciler.api.kinds import Engine, Workload
from reconciler.api.launch import LaunchSpec
from reconciler.api.policy import Policy
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.status import Placement
from reconciler.control.placement import SecretFacts, consent_verdict, local_blocker, place
from reconciler.control.workloads import WorkloadRenderer
from reconciler.diff.engines import Rendered
from reconciler.diff.plan import Action, Inputs, Verb
from reconciler.gate import network
from reconciler.gate.placement import PlacementDecision
from reconciler.gate.verdict import (DEFAULT_POLICY, EXPOSURE_OBSERVED, POLICY_DENIED, Decision, Facts, Reason, Verdict,
                                     decide, listen_findings, running_denial)
from reconciler.drive.users import own_user
from reconciler.load.desired import DesiredState
from reconciler.observe.host import file_sha256
from reconciler.observe.processes import ProcessState, RunAs
from reconciler.record.approvals import ApprovalStore


@dataclass(frozen=True)
class Judged:
    action: Action
    verdict: Verdict | None
    placement: PlacementDecision | None = None
    secret: SecretFacts | None = None
    listens: network.ListenFindings | None = None  # what the running process was seen listening on, judged
    consent: Approval | None = None  # the answer about its hosted fallback, as this judgement read it


class Judge:
    def __init__(self, workloads: WorkloadRenderer, approvals: ApprovalStore) -> None:
        self.workloads = workloads
        self.approvals = approvals

    def judge(self, desired: DesiredState, policy: Policy | None, inputs: Inputs, action: Action, rendered: Rendered,
              tighten: bool = True) -> Judged:
        """`tighten`: the policy in force is settled enough to stop what runs when it refuses it."""
        entry, record, process = inputs.desired, inputs.record, inputs.process
        workload = entry.resource if entry is not None and isinstance(entry.resource, Workload) else None
        approval = self.approvals.get(workload.name) if workload is not None else None
        placement = secret = consent = None
        if workload is not None and entry is not None and process is not None:
            running = process.state in (ProcessState.running, ProcessState.unknown)  # unknown may well run
            blocker = None if running else local_blocker(
                rendered, self.workloads.commitment(desired, workload), self.workloads.memory_total,
                policy.spec if policy else DEFAULT_POLICY)
            consent = self.approvals.get(workload.name, hosted=True)
            placement, secret = place(workload, entry.spec_hash, blocker, policy, consent, self._gateway_users(desired)
                                      if workload.spec.fallback is not None else ())
            if placement.placement is not Placement.local and action.verb in (Verb.create, Verb.recreate):
                action = Action(action.key, Verb.none, placement.message, action.generation, blocked=blocker)
        verdict = None
        if action.changes_something:
            starts = action.verb in (Verb.create, Verb.recreate) and workload is not None and entry is not None
            verdict = decide(action, policy, self._facts(desired, rendered, workload, entry.spec_hash, approval, policy,
                                                         record) if starts else Facts())
        elif placement is not None and entry is not None:
            verdict = consent_verdict(placement, consent, entry.spec_hash)
        keeps_running = action.verb in (Verb.none, Verb.update) or (
            action.verb is Verb.recreate and verdict is not None and not verdict.approved)  # the old one stays
        running = process.record if process is not None and process.running_pid is not None else None
        listens = listen_findings(inputs.listening.pid, inputs.listening.listening, running.launch, policy) \
            if inputs.listening is not None and running is not None and isinstance(running.launch, LaunchSpec) else None
        if tighten and keeps_running and process is not None and record is not None:
            action, verdict = self._tightened(action, verdict, policy, process, record, listens)
        return Judged(action, verdict, placement, secret, listens, consent)

    def _gateway_users(self, desired: DesiredState) -> tuple[RunAs, ...]:
        """Whom the running gateways run as: each sends the hosted keys, so each must read them."""
        users = []
        for key, entry in desired.resources.items():
            if isinstance(entry.resource, Workload) and entry.resource.spec.engine is Engine.gateway:
                observed = self.workloads.driver.observe(key.name, False)
                if observed.running_pid is not None and observed.record is not None:
                    users.append(observed.record.run_as or _reconciler_itself())
        return tuple(users)

    def _facts(self, desired: DesiredState, rendered: Rendered, workload: Workload, spec_hash: str,
               approval: Approval | None, policy: Policy | None, record: ResourceRecord | None) -> Facts:
        launch = rendered.launch
        executables = _as_found(launch.executable if launch else None)
        checks = self.workloads.check_executables(rendered, workload)
        return Facts(executables, checks, _pinned_digests(policy, executables, checks),
                     spec_hash, approval, self.workloads.memory_use(desired, workload), record.exposure if record else None)

    def _tightened(self, action: Action, verdict: Verdict | None, policy: Policy | None, process, record: ResourceRecord,
                   listens: network.ListenFindings | None) -> tuple[Action, Verdict | None]:
        """A running workload that the policy in force refuses now (it was tightened), or that was seen listening
        where it does not allow (enforce mode), is stopped, with the reason."""
        running = process.record
        if process.state is not ProcessState.running or running is None or action.verb is Verb.stop or action.orphaned:
            return action, verdict  # an orphan is out of the desired state on purpose: what governs it left with it
        executables = _as_found(running.launch.executable)
        reasons = running_denial(running.launch, policy, Facts(executables, digests=_pinned_digests(policy, executables)))
        source = f"Policy/{policy.name}" if policy else "the default policy"
        if reasons:
            cause = f"stopped: {source} no longer allows what runs: " + "; ".join(str(reason) for reason in reasons)
            failure, rule = POLICY_DENIED, "policy.tightened"
        elif listens is not None and listens.refused and listens.enforced:
            cause = f"stopped: seen listening where {source} does not allow: " + "; ".join(listens.reasons)
            failure, rule = EXPOSURE_OBSERVED, network.OBSERVED_RULE
        else:
            return action, verdict
        stop = replace(Action(action.key, Verb.stop, cause, action.generation or record.generation), failure_reason=failure)
        return stop, Verdict(Decision.approve, (Reason(rule, cause),))


def _as_found(executable: str | None) -> tuple[str, ...]:
    """An executable as the gate judges it: where PATH finds it, then with symlinks resolved."""
    return (executable, os.path.realpath(executable)) if executable else ()


def _pinned_digests(policy: Policy | None, *programs: tuple[str, ...]) -> dict[str, str]:
    """SHA-256 of each program's resolved file (the last of its names), only when the policy pins some
    executable: hashing is not free."""
    if policy is None or not any(entry.sha256 for entry in policy.spec.native.trusted_executables):
        return {}
    resolved = {names[-1] for names in programs if names and names[-1].startswith("/")}
    return {path: digest for path in resolved if (digest := file_sha256(path))}


def _reconciler_itself() -> RunAs:
    """A workload started with no user switch (the reconciler is not root) runs as the reconciler."""
    return RunAs(uid=os.geteuid(), gid=os.getegid(), name=own_user(), home="", groups=tuple(os.getgroups()))
