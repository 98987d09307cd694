"""Which changes wait for a person, and whether one answered for this exact spec. Pure."""

from __future__ import annotations

from reconciler.api.approval import Answer, Approval
from reconciler.api.container import is_loopback, runs_as_root
from reconciler.api.launch import ContainerLaunch, LaunchSpec
from reconciler.api.policy import ApprovalKind

RULE = "approvals.required"
ANSWER_RULE = "approvals.answer"  # a person's deny, which holds whatever the policy requires


def kinds_of(launch: LaunchSpec | ContainerLaunch, engine_trusted: bool) -> set[ApprovalKind]:
    """What kinds of change starting this launch is, in the policy's approval vocabulary."""
    kinds = {ApprovalKind.any_change}
    if isinstance(launch, ContainerLaunch):
        if launch.network == "host" or any(not is_loopback(port.host_ip) for port in launch.ports):
            kinds.add(ApprovalKind.exposure)
        if (launch.network == "host" or launch.capabilities or not launch.read_only_root_filesystem
                or runs_as_root(launch.effective_user) or any(not volume.read_only for volume in launch.volumes)):
            kinds.add(ApprovalKind.privilege)
        return kinds
    if not engine_trusted:
        kinds.add(ApprovalKind.native_executable)
    if launch.listen is not None and not is_loopback(launch.listen[0]):
        kinds.add(ApprovalKind.exposure)
    if launch.user == "root":
        kinds.add(ApprovalKind.privilege)
    return kinds


def approval_answer(
    name: str, needed: list[ApprovalKind], approval: Approval | None, spec_hash: str | None
) -> tuple[Answer | None, str]:
    """(the person's answer for this spec, or None while it waits; why)."""
    what = ", ".join(kind.value for kind in needed)
    if approval is not None and approval.covers(spec_hash):
        return approval.answer, f"{what}: {approval.describe()} for spec {approval.spec_hash[:12]}"
    ask = f"run `reconciler approve {name} --spec-hash {spec_hash[:12]}` (or `reconciler deny`)" if spec_hash else \
        f"approve {name} once its spec is known"
    stale = (f"; the answer ({approval.describe()}) was for spec {approval.spec_hash[:12]}, and the spec has "
             "changed since") if approval is not None and spec_hash is not None else ""
    return None, f"{what} needs a person's approval: {ask}{stale}"
