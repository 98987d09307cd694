"""`reconciler forget`: delete what is kept about a resource once it is gone, and record that it was.

Evidence is kept per spec file, so a chain may also hold other resources' lines: such a chain is rewritten
without the forgotten ones (``rewrite_chain``); one with nothing else in it is deleted. The deletion itself is
evidence, appended to the state directory's host log, which is never pruned here.

GitOps keeps the last few revisions on disk (``control.gitops``), each with the status and evidence it had when
it was left: copies the daemon never reads again (a switch back replaces them), which hold the resource all the
same. They go too, a shared chain or status file rewritten without it.

A running daemon writes nothing more about a resource it no longer owns, so forget needs it away (the lock) only
where it could write at the same moment: a leftover state record (its next pass prunes it, and logs that), a
chain it appends to (its ``EvidenceLog`` caches the last hash, so a rewrite under it would fork the chain), and
an older revision (a switch to it carries the live outputs in, which a rewrite of the stale ones would replace).
A file that cannot be removed is listed in the deletion record, and the rest still goes.
"""

from __future__ import annotations

import re
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from reconciler.api.meta import DNS_1123_LABEL, ResourceKey
from reconciler.base.atomic import read_regular, write_atomic
from reconciler.base.lock import Busy, exclusive
from reconciler.control.gitops import GITOPS
from reconciler.drive.cgroups import Cgroups
from reconciler.drive.process import ProcessDriver
from reconciler.drive.users import DynamicUsers, UserUnavailable
from reconciler.gateway.spool import demand_file, spool_files
from reconciler.load.desired import load_desired
from reconciler.observe.processes import ProcessState
from reconciler.record.approvals import ApprovalStore
from reconciler.record.evidence import (
    HOST_EVIDENCE_FILE, EvidenceLog, read_records, rewrite_chain, split_replaced, verify_chain,
)
from reconciler.record.recorder import DECISIONS, DECISIONS_HEADER, STATUS, STATUS_HEADER
from reconciler.record.store import StateStore
from reconciler.record.verify import find_chains, verify_report

FORGETTABLE_KINDS = ("Workload", "Model")


class Refused(Exception):
    """Forgetting now would lose track of something still in use, or hide a broken chain."""


@dataclass
class ForgetPlan:
    key: ResourceKey
    deleted: list[Path] = field(default_factory=list)  # files and folders, in the order they go
    rewritten: dict[Path, int] = field(default_factory=dict)  # chain -> how many of its records go
    trimmed: list[Path] = field(default_factory=list)  # status files of older revisions, rewritten without it
    copies: int = 0  # of those files, how many are in older GitOps revisions
    records: int = 0  # the resource's evidence records, in all (copies not counted)
    cgroups: dict[str, str] = field(default_factory=dict)  # of an ended run whose record goes
    uid: int | None = None  # its dynamic user's, released for another workload
    lock_reason: str | None = None  # why a running reconciler must be away, when it must
    failed: dict[Path, str] = field(default_factory=dict)  # what could not be removed, and why

    @property
    def empty(self) -> bool:
        return not self.deleted and not self.rewritten and not self.trimmed and self.uid is None


def plan_forget(key: ResourceKey, root: Path, state_dir: Path) -> ForgetPlan:
    """What forgetting ``key`` removes; raises Refused while it is declared or anything of it may still run."""
    if key.kind not in FORGETTABLE_KINDS:
        raise Refused(f"{key}: only {' and '.join(FORGETTABLE_KINDS)} resources can be forgotten")
    if not re.fullmatch(DNS_1123_LABEL, key.name):  # it becomes paths and glob patterns below: `..` or `*` must not
        raise Refused(f"{key.name!r} is not a resource name (a DNS-1123 label: a-z, 0-9 and '-')")
    _refuse_if_declared(key, root)
    plan = ForgetPlan(key)
    record = StateStore(state_dir)._path(key)
    if record.exists():
        plan.deleted.append(record)
        plan.lock_reason = "its state record is still there, and a running reconciler prunes it itself"
    if key.kind == "Workload":
        _plan_workload(plan, state_dir)
    for chain in find_chains(root):
        _plan_chain(plan, chain)
    _plan_older_revisions(plan, root, state_dir)
    return plan


def forget(key: ResourceKey, root: Path, state_dir: Path, who: str, dry_run: bool = False) -> ForgetPlan:
    """Remove what ``plan_forget`` finds (nothing with ``dry_run``) and append the deletion, by ``who``, to the host log."""
    root, state_dir = root.resolve(), state_dir.resolve()  # the host log names paths that mean the same later
    plan = plan_forget(key, root, state_dir)
    if dry_run or plan.empty:
        return plan
    reason = plan.lock_reason
    home = state_dir / GITOPS  # a followed branch's folder lock is its follower's, where `run --git` takes it
    folder = home if root.is_relative_to(home) else root
    try:
        with exclusive(folder, state_dir, "forget") if reason else nullcontext():
            if reason:
                plan = plan_forget(key, root, state_dir)  # looked at again: it may have changed before the lock was held
            if not plan.empty:
                _carry_out(plan, state_dir, who)
    except Busy as busy:
        raise Refused(f"{key}: {reason}: {busy}") from None
    return plan


def _refuse_if_declared(key: ResourceKey, root: Path) -> None:
    desired = load_desired(root)
    entry = desired.resources.get(key)
    if entry is not None:
        raise Refused(f"{key} is still declared in {root / entry.file}: remove it there, apply, then forget it")
    if key in desired.rejected:
        raise Refused(f"{key} is still declared (though its spec does not load: {desired.rejected[key][0]})")
    problem = desired.unattributed_error()
    if problem is not None:  # a file that does not load might be the one that declares it
        raise Refused(f"cannot tell whether {key} is still declared: {problem}")


def _plan_workload(plan: ForgetPlan, state_dir: Path) -> None:
    """The files kept under the workload's name: see ProcessDriver, ContainerDriver, LogStore and ApprovalStore."""
    key, name = plan.key, plan.key.name
    processes = state_dir / "processes"
    if (processes / f"{name}.intent").exists():
        raise Refused(f"{key}: a start of it was cut short and may have left a process: "
                      "run `reconciler apply` (which stops it) first")
    if (state_dir / "containers" / f"{name}.json").exists():
        raise Refused(f"{key}: the reconciler has not removed its container yet: run `reconciler apply` "
                      "(or `reconciler down`) first")
    driver = ProcessDriver(state_dir, readonly=True)
    observed = driver.observe(name)
    if observed.state is ProcessState.running:
        raise Refused(f"{key} still runs (pid {observed.running_pid}): run `reconciler apply` (or `reconciler down`) "
                      "to stop it first")
    if observed.record is not None:
        plan.cgroups = observed.record.cgroups
    try:
        plan.uid = DynamicUsers(state_dir).allocated().get(name)
    except UserUnavailable as unreadable:
        raise Refused(f"{key}: {unreadable}") from None
    # a name has no dot, so "<name>." starts this workload's files only: both its logs, and every answer kept for it
    # (approval, hosted consent, and any kind added later, such as a rollback request)
    named = [file for folder in (state_dir / "logs", ApprovalStore(state_dir).directory)
             for file in sorted(folder.glob(f"{name}.*"))]
    # the gateway's: a namesake declared later must not inherit its idle clock, nor its requests' lines
    gateway = [demand_file(state_dir, name), *spool_files(state_dir, name)]
    candidates = [processes / f"{name}.json", *named, *gateway, Path(driver.default_working_dir(name))]
    plan.deleted += [path for path in candidates if path.exists() or path.is_symlink()]


def _plan_chain(plan: ForgetPlan, chain: Path, copy: bool = False) -> None:
    key = str(plan.key)
    replaced, current = split_replaced(chain)
    records = read_records(current)
    about = sum(1 for record in records if record is not None and record.get("resource") == key)
    others = any(record is None or record.get("resource") not in (None, key) for record in records)
    if about:
        result = verify_chain(chain)
        if not result.ok:
            raise Refused(f"{plan.key}: {verify_report(chain, result)}; forgetting would rewrite or delete that "
                          "chain and hide the break: keep it for whoever looks into it, or remove it yourself")
        plan.records += 0 if copy else about
    if about and others:
        plan.rewritten[chain] = about
        if plan.lock_reason is None:
            plan.lock_reason = f"{chain} is rewritten without its records, and a running reconciler appends to it"
    else:  # a rewrite cut short leaves `replaced` files: copies and lines meant to be gone, whoever's they were
        plan.deleted += replaced + (current if about else [])


def _plan_older_revisions(plan: ForgetPlan, root: Path, state_dir: Path) -> None:
    revisions = state_dir / GITOPS / "revisions"
    if not revisions.is_dir():
        return
    in_force = root.resolve()
    before = len(plan.deleted) + len(plan.rewritten)
    for tree in sorted(revisions.iterdir()):
        if tree.name.startswith(".") or not tree.is_dir() or in_force.is_relative_to(tree.resolve()):
            continue  # a dot-name is a tree being built; the one in force was planned above
        for chain in find_chains(tree):
            _plan_chain(plan, chain, copy=True)
        for status in sorted(path for suffix in (STATUS, DECISIONS) for path in tree.rglob(f"*{suffix}")):
            report, entries = _status_report(status)
            if any(_is_about(entry, plan.key) for entry in entries):
                others = report.get("errors") or not all(_is_about(entry, plan.key) for entry in entries)
                (plan.trimmed if others else plan.deleted).append(status)
    plan.copies = len(plan.deleted) + len(plan.rewritten) - before + len(plan.trimmed)
    if plan.copies and plan.lock_reason is None:
        plan.lock_reason = (f"{plan.copies} copies of its evidence or status in older GitOps revisions are removed, and a "
                            "running daemon carries its outputs into a revision it switches to")


def _status_report(status: Path) -> tuple[dict[str, object], list[object]]:
    """A status file and its `resources`; one that cannot be read or parsed is taken as reporting everything (it
    is a copy the daemon never reads again; one that cannot be removed either is listed as such)."""
    try:
        report = yaml.safe_load(read_regular(status)) or {}  # a link committed to the branch is not followed
    except (OSError, yaml.YAMLError):
        return {}, [None]
    entries = report.get("resources", []) if isinstance(report, dict) else None
    return (report, entries) if isinstance(report, dict) and isinstance(entries, list) else ({}, [None])


def _is_about(entry: object, key: ResourceKey) -> bool:
    return entry is None or isinstance(entry, dict) and (entry.get("kind"), entry.get("name")) == (key.kind, key.name)


def _trim_status(status: Path, key: ResourceKey) -> None:
    report, entries = _status_report(status)
    kept = [entry for entry in entries if not _is_about(entry, key)]
    header = DECISIONS_HEADER if status.name.endswith(DECISIONS) else STATUS_HEADER
    write_atomic(status, header + yaml.safe_dump({**report, "resources": kept}, sort_keys=False, allow_unicode=True))


def _carry_out(plan: ForgetPlan, state_dir: Path, who: str) -> None:
    """Rewrites first and the host log last: a crash in between leaves no kept record lost, and a rerun finishes."""
    key = str(plan.key)
    now = datetime.now(timezone.utc).isoformat()
    rewritten = []
    for chain, count in plan.rewritten.items():
        head = {"time": now, "removed": key, "removedRecords": count, "by": who, "cause": "reconciler forget"}
        try:
            old_end, new_end = rewrite_chain(chain, lambda record: record.get("resource") != key, head)
        except OSError as error:
            plan.failed[chain] = _why(error)
            continue
        rewritten.append({"path": str(chain), "removedRecords": count, "replacedChainEnd": old_end, "newChainEnd": new_end})
    Cgroups.release(plan.cgroups)
    released = DynamicUsers(state_dir).release(plan.key.name) if plan.uid is not None else None
    for status in plan.trimmed:
        try:
            _trim_status(status, plan.key)
        except OSError as error:
            plan.failed[status] = _why(error)
    for path in plan.deleted:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as error:
            plan.failed[path] = _why(error)
    deleted = [str(path) for path in plan.deleted if path not in plan.failed]
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    EvidenceLog(state_dir / HOST_EVIDENCE_FILE).append({
        "time": now, "event": "forget", "resource": key, "by": who, "deleted": deleted, "rewritten": rewritten,
        "statusRewritten": [str(path) for path in plan.trimmed if path not in plan.failed],
        "notRemoved": [{"path": str(path), "why": why} for path, why in plan.failed.items()],
        **({"releasedUid": released} if released is not None else {}),
        "counts": {"evidenceRecords": plan.records, "filesDeleted": len(deleted), "chainsRewritten": len(rewritten),
                   "copiesInOlderRevisions": plan.copies},
    })


def _why(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)
