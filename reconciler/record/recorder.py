"""Writes what happened beside each spec: `X.status.yaml` (replaced atomically) and `X.evidence.jsonl`.

The folder is someone else's: a name there planted as a link or a special file is refused (never written through,
never removed), and so is a folder removed with its specs. Evidence meant for such a file goes to the state
directory's host log instead, naming the spec file and why, so no decision goes unrecorded; the refusal shows in
the spec file's status (when that can be written) and once in the daemon's log.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.api.status import ResourceStatus
from reconciler.observe import clock
from reconciler.record.atomic import UnsafeFile, remove_regular, write_atomic
from reconciler.load.desired import SPEC_SUFFIXES, output_stem
from reconciler.record.evidence import EVIDENCE_SUFFIX, EvidenceLog

log = logging.getLogger("reconciler")

STATUS_HEADER = "# Written by the reconciler after each pass. Edits are overwritten and never read back.\n"
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
        self._written: dict[str, dict[str, Any]] = {}  # what each status file holds, as data
        self._logs: dict[str, EvidenceLog] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # computing a status file and writing it is one step
        self.revision: str | None = None  # of the desired state's source (`main@sha1:...`), when it is in git

    def evidence(self, spec_file: str, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            chain = self._logs.get(spec_file)
            if chain is None:
                chain = self._logs[spec_file] = EvidenceLog(self.root / sibling(spec_file, EVIDENCE_SUFFIX), root=self.root)
        revision = self.revision
        line = {**record, "revision": revision} if revision else record
        try:
            written = chain.append(line)
        except (UnsafeFile, FileNotFoundError) as problem:
            reason = self._refusal(spec_file, sibling(spec_file, EVIDENCE_SUFFIX), problem)
            return self._host_append({**line, "specFile": spec_file, "diverted": reason})
        self._refusal(spec_file, sibling(spec_file, EVIDENCE_SUFFIX), None)
        return written

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

    def _host_append(self, record: dict[str, Any]) -> dict[str, Any]:
        with self._host_lock:  # its tail is read afresh: `reconciler forget` appends to it from another process
            return EvidenceLog(self.host_log).append(record)

    def set_status(self, spec_file: str, status: ResourceStatus) -> None:
        key = ResourceKey(status.kind, status.name)
        with self._lock:
            for file, statuses in self._statuses.items():
                if file != spec_file:
                    statuses.pop(key, None)
            self._statuses[spec_file][key] = status

    def statuses(self) -> dict[ResourceKey, ResourceStatus]:
        """Every resource's status as last set: what the status files show."""
        with self._lock:
            return {key: status for statuses in self._statuses.values() for key, status in statuses.items()}

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
        """Remove status files whose spec is gone and that report nothing we own (a rename while we were down)."""
        with self._lock:
            reported = {sibling(file, ".status.yaml") for file, statuses in self._statuses.items() if statuses}
        for status_file in self.root.rglob("*.status.yaml"):
            relative = str(status_file.relative_to(self.root))
            stem = relative.removesuffix(".status.yaml")
            if relative != HOST_PROFILE_FILE and relative not in reported and not any((self.root / f"{stem}{ext}").exists() for ext in SPEC_SUFFIXES):
                try:
                    remove_regular(status_file, root=self.root)
                except (UnsafeFile, FileNotFoundError):
                    continue  # not ours to remove (a link, a FIFO), or its folder went meanwhile

    def host_profile(self, body: dict[str, Any]) -> None:
        """Publish the host profile (the caller observes it at most every 30 s); unchanged content is not rewritten."""
        target = self.root / HOST_PROFILE_FILE
        with self._flush_lock:
            if self._written.get(HOST_PROFILE_FILE) == body and target.exists():
                return
            try:
                write_atomic(target, STATUS_HEADER + yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True),
                             root=self.root)
            except UnsafeFile as unsafe:
                self._refusal(HOST_PROFILE_FILE, HOST_PROFILE_FILE, unsafe)
                return
            self._written[HOST_PROFILE_FILE] = body

    def flush(self, spec_files: set[str]) -> None:
        """Rewrite the status file of each given spec file whose content changed; drop those owning nothing."""
        for spec_file in sorted(spec_files):
            with self._flush_lock:  # read and write as one step, or a slower writer could put back older content
                self._flush_one(spec_file)

    def _flush_one(self, spec_file: str) -> None:
        with self._lock:
            statuses = sorted(self._statuses.get(spec_file, {}).values(), key=lambda s: (s.kind, s.name))
            errors = self._file_errors.get(spec_file, [])
            evidence = sibling(spec_file, EVIDENCE_SUFFIX)  # the status file says why its evidence is elsewhere
            refused = [reason for (file, output), reason in self._refused.items() if (file, output) == (spec_file, evidence)]
        target = self.root / sibling(spec_file, ".status.yaml")
        if not statuses and not errors:
            try:
                remove_regular(target, root=self.root)  # nothing of this file is owned any more
            except UnsafeFile as unsafe:
                self._refusal(spec_file, str(target.relative_to(self.root)), unsafe)
            self._written.pop(spec_file, None)
            return
        errors = [*errors, *(reason for reason in refused if reason not in errors)]
        body = {
            "apiVersion": API_VERSION,
            "kind": "StatusReport",
            "source": spec_file,
            **({"revision": self.revision} if self.revision else {}),
            "errors": errors,
            "resources": [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in statuses],
        }
        if self._written.get(spec_file) == body and target.exists():
            return  # compared as data: serialising every status of a file on every reconcile was most of an idle daemon's CPU
        text = STATUS_HEADER + yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        try:
            write_atomic(target, text, root=self.root)
        except FileNotFoundError:
            return  # its folder was removed: the resources it held are being removed
        except UnsafeFile as unsafe:
            self._refusal(spec_file, str(target.relative_to(self.root)), unsafe)
            return
        self._refusal(spec_file, str(target.relative_to(self.root)), None)
        self._written[spec_file] = body
