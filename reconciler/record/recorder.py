"""Writes what happened beside each spec: `X.status.yaml` and `X.decisions.yaml` (replaced atomically) and
`X.evidence.jsonl`. The decision records live in their own file: they were most of each status file, which a
person should read at a glance.

The folder is someone else's: a name there planted as a link or a special file is refused (never written through,
never removed), and so is a folder removed with its specs. Evidence meant for such a file goes to the state
directory's host log instead, naming the spec file and why, so no decision goes unrecorded; the refusal shows in
the spec file's status (when that can be written) and once in the daemon's log.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import yaml

from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.api.status import ResourceStatus
from reconciler.base.atomic import UnsafeFile, already_holds, remove_regular, write_atomic
from reconciler.load.desired import SPEC_SUFFIXES, output_stem
from reconciler.observe import clock
from reconciler.record.evidence import EVIDENCE_SUFFIX, EvidenceLog, last_record_about

log = logging.getLogger("reconciler")

STATUS_HEADER = "# Written by the reconciler after each pass. Edits are overwritten and never read back.\n"
DECISIONS_HEADER = ("# Written by the reconciler: why each workload runs where and how it does (its Runtime Decision "
                    "Record).\n" + STATUS_HEADER)
STATUS, DECISIONS = ".status.yaml", ".decisions.yaml"
HOST_PROFILE_FILE = "host-profile.status.yaml"  # what this host offers, beside the specs that ask for it


def sibling(spec_file: str, suffix: str) -> str:
    """chat.yaml -> chat.status.yaml / chat.evidence.jsonl."""
    return output_stem(spec_file) + suffix


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: same text, a fraction of the time

class Recorder:
    def __init__(self, root: Path, host_log: Path) -> None:
        """`host_log`: the state directory's evidence log, where evidence goes that its spec's log cannot take."""
        self.root = root
        self.host_log = host_log
        self._refused: dict[tuple[str, str], str] = {}  # (spec file, its output file) -> why that is not written
        self._host_lock = threading.Lock()
        self._statuses: dict[str, dict[ResourceKey, ResourceStatus]] = defaultdict(dict)
        self._file_errors: dict[str, list[str]] = {}
        self._written: dict[str, tuple[dict[str, Any], _Identity]] = {}  # what each file holds, as data
        self._texts: dict[str, dict[Any, tuple[Any, str]]] = {}  # each file's parts as last dumped: data -> text
        self._dumps: dict[str, dict[tuple[str, str], tuple[ResourceStatus, dict[str, Any]]]] = {}  # status -> data
        self._logs: dict[str, EvidenceLog] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # computing a status file and writing it is one step
        self.revision: str | None = None  # of the desired state's source (`main@sha1:...`), when it is in git

    def evidence(self, spec_file: str, record: dict[str, Any],
                 before_write: Callable[[str], None] | None = None) -> dict[str, Any]:
        with self._lock:
            chain = self._logs.get(spec_file)
            if chain is None:
                chain = self._logs[spec_file] = EvidenceLog(self.root / sibling(spec_file, EVIDENCE_SUFFIX), root=self.root)
        revision = self.revision
        line = {**record, "revision": revision} if revision else record
        try:
            written = chain.append(line, before_write)
        except (UnsafeFile, FileNotFoundError) as problem:
            reason = self._refusal(spec_file, sibling(spec_file, EVIDENCE_SUFFIX), problem)
            return self._host_append({**line, "specFile": spec_file, "diverted": reason}, before_write)
        self._refusal(spec_file, sibling(spec_file, EVIDENCE_SUFFIX), None)
        return written

    def last_evidence(self, spec_file: str, matches: Callable[[dict[str, Any]], bool],
                      mentions: bytes = b"") -> tuple[dict[str, Any], str] | None:
        """The newest line of `spec_file`'s evidence that `matches` (and holds the bytes `mentions`), and its hash (what
        a line naming it carries)."""
        return last_record_about(self.root / sibling(spec_file, EVIDENCE_SUFFIX), matches, root=self.root,
                                 mentions=mentions)

    def _refusal(self, spec_file: str, output: str, problem: OSError | None) -> str | None:
        """Note why `output` (of `spec_file`) is not written, None: it is again; each new reason is said once."""
        if isinstance(problem, FileNotFoundError):
            reason: str | None = f"{self.root / output}: its folder is gone"
        else:
            reason = None if problem is None else str(problem)
        if reason is not None and output.endswith(EVIDENCE_SUFFIX):
            reason += f"; this file's evidence goes to {self.host_log} meanwhile"
        with self._lock:
            before = self._refused.pop((spec_file, output), None)
            if reason is not None:
                self._refused[(spec_file, output)] = reason
        if reason is not None and reason != before:
            log.warning("%s", reason)
            self._host_append({"time": clock.now().isoformat(), "event": "refused-output", "specFile": spec_file,
                               "file": output, "reason": reason})
        return reason

    def _host_append(self, record: dict[str, Any], before_write: Callable[[str], None] | None = None) -> dict[str, Any]:
        with self._host_lock:  # its tail is read afresh: `reconciler forget` appends to it from another process
            return EvidenceLog(self.host_log).append(record, before_write)

    def set_status(self, spec_file: str, status: ResourceStatus) -> None:
        key = ResourceKey(status.kind, status.name)
        with self._lock:
            for file, statuses in self._statuses.items():
                if file != spec_file:
                    statuses.pop(key, None)
            self._statuses[spec_file][key] = status

    def statuses(self, keys: Collection[ResourceKey] | None = None) -> dict[ResourceKey, ResourceStatus]:
        """Every resource's status as last set (what the status files show), or only those of `keys`."""
        with self._lock:
            if keys is None:
                return {key: status for statuses in self._statuses.values() for key, status in statuses.items()}
            return {key: status for statuses in self._statuses.values() for key in keys
                    if (status := statuses.get(key)) is not None}

    def forget(self, key: ResourceKey) -> None:
        with self._lock:
            for statuses in self._statuses.values():
                statuses.pop(key, None)

    def set_file_errors(self, spec_file: str, errors: list[str]) -> bool:
        """Returns whether they changed (and the status file needs writing)."""
        with self._lock:
            changed = self._file_errors.get(spec_file, []) != errors
            self._file_errors[spec_file] = errors
            return changed

    def sweep_orphans(self) -> None:
        """Remove status and decision files whose spec is gone and that report nothing we own (a rename while we
        were down)."""
        with self._lock:
            reported = {file for file, statuses in self._statuses.items() if statuses}
        for suffix in (STATUS, DECISIONS):
            for written in self.root.rglob(f"*{suffix}"):
                relative = str(written.relative_to(self.root))
                stem = relative.removesuffix(suffix)
                if relative != HOST_PROFILE_FILE and not {f"{stem}{ext}" for ext in SPEC_SUFFIXES} & reported \
                        and not any((self.root / f"{stem}{ext}").exists() for ext in SPEC_SUFFIXES):
                    try:
                        remove_regular(written, root=self.root)
                    except (UnsafeFile, FileNotFoundError):
                        continue  # not ours to remove (a link, a FIFO), or its folder went meanwhile

    def host_profile(self, body: dict[str, Any]) -> None:
        """Publish the host profile (the caller observes it at most every 30 s); unchanged content is not rewritten."""
        with self._flush_lock:
            self._write(HOST_PROFILE_FILE, HOST_PROFILE_FILE, body, STATUS_HEADER)

    def flush(self, spec_files: set[str]) -> None:
        """Rewrite the status file of each given spec file whose content changed; drop those owning nothing."""
        for spec_file in sorted(spec_files):
            with self._flush_lock:  # read and write as one step, or a slower writer could put back older content
                self._flush_one(spec_file)

    def _flush_one(self, spec_file: str) -> None:
        with self._lock:
            statuses = sorted(self._statuses.get(spec_file, {}).values(), key=lambda s: (s.kind, s.name))
            errors = self._file_errors.get(spec_file, [])
            # the status file says why its evidence or decision records are not where they belong
            elsewhere = {sibling(spec_file, EVIDENCE_SUFFIX), sibling(spec_file, DECISIONS)}
            refused = [reason for (file, output), reason in self._refused.items() if file == spec_file and output in elsewhere]
        revision = {"revision": self.revision} if self.revision else {}
        decided = [{"kind": s.kind, "name": s.name, "decisionRecord": s.decision_record} for s in statuses if s.decision_record]
        if decided:
            self._write(spec_file, sibling(spec_file, DECISIONS), {
                "apiVersion": API_VERSION, "kind": "DecisionRecords", "source": spec_file, **revision,
                "resources": decided}, DECISIONS_HEADER)
        else:
            self._remove(spec_file, sibling(spec_file, DECISIONS))
        if not statuses and not errors:
            self._dumps.pop(spec_file, None)
            self._remove(spec_file, sibling(spec_file, STATUS))  # nothing of this file is owned any more
            return
        errors = [*errors, *(reason for reason in refused if reason not in errors)]
        self._write(spec_file, sibling(spec_file, STATUS), {
            "apiVersion": API_VERSION,
            "kind": "StatusReport",
            "source": spec_file,
            **revision,
            "errors": errors,
            "resources": self._dumped(spec_file, statuses),
        }, STATUS_HEADER)

    def _dumped(self, spec_file: str, statuses: list[ResourceStatus]) -> list[dict[str, Any]]:
        """Each status as its file shows it, dumped again only when it differs: each reconcile sets a new status for
        its own resource and flushes its whole file, and dumping every status of the file again was a fifth of an
        idle pass; an equal one keeps the last dump, the same object, so comparing the file's content with what it
        holds is an identity check. A status set is never changed afterwards (each pass makes its own). Flush lock
        held."""
        before, after = self._dumps.get(spec_file, {}), {}
        for status in statuses:
            known = before.get((status.kind, status.name))
            after[(status.kind, status.name)] = known if known is not None and (known[0] is status or known[0] == status) else (
                status, status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"decision_record"}))
        self._dumps[spec_file] = after
        return [dumped for _, dumped in after.values()]

    def _remove(self, spec_file: str, name: str) -> None:
        try:
            remove_regular(self.root / name, root=self.root)
        except UnsafeFile as unsafe:
            self._refusal(spec_file, name, unsafe)
        except FileNotFoundError:
            pass  # its folder was removed with it
        else:
            self._refusal(spec_file, name, None)
        self._written.pop(name, None)
        self._texts.pop(name, None)

    def _write(self, spec_file: str, name: str, body: dict[str, Any], header: str) -> None:
        """Write `body` unless the file holds it already: compared as data (serialising every status of a file on
        every reconcile was most of an idle daemon's CPU), and the file observed, not trusted to be as written: a
        hand edit, a removal or a restore is undone on the next pass. Flush lock held."""
        target = self.root / name
        held = (body, _identity(target))
        if self._written.get(name) == held:
            self._written[name] = held  # equal data, maybe other objects: the next comparison is then an identity check
            return
        text = header + self._text(name, body)
        # not written by this process yet (the first pass after a start, each `apply`): read before writing, since
        # rewriting and syncing every status file unchanged was most of a first pass
        if name not in self._written and already_holds(target, text, root=self.root):
            self._refusal(spec_file, name, None)
            self._written[name] = (body, _identity(target))
            return
        try:
            write_atomic(target, text, root=self.root)
        except FileNotFoundError:
            return  # its folder was removed: the resources it held are being removed
        except UnsafeFile as unsafe:
            self._refusal(spec_file, name, unsafe)
            return
        self._refusal(spec_file, name, None)
        self._written[name] = (body, _identity(target))

    def _text(self, name: str, body: dict[str, Any]) -> str:
        """The YAML of `body`, as one dump of it would write it, from parts dumped again only when they changed:
        each reconcile rewrites its file, and dumping every resource of the file each time made a pass quadratic
        in a file's resources (2,000 of them: 1.7 s per reconcile, a killed workload elsewhere down for minutes)."""
        if "resources" not in body:
            return yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        before, after = self._texts.get(name, {}), {}

        def dumped(part: Any, value: Any) -> str:
            known = before.get(part)
            after[part] = known if known is not None and known[0] == value else (
                value, yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True))
            return after[part][1]

        head = dumped("head", {field: value for field, value in body.items() if field != "resources"})
        resources = "".join(dumped((resource["kind"], resource["name"]), [resource]) for resource in body["resources"])
        self._texts[name] = after
        return head + ("resources:\n" + resources if resources else "resources: []\n")


_Identity = tuple[int, int, int, int] | None


def _identity(path: Path) -> _Identity:
    """Which bytes a file holds, as far as a stat tells: any write or replacement changes its inode, size or
    change time (which, unlike the modification time, no user can set back). The name itself, never a link's
    target."""
    try:
        stat = path.lstat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns
