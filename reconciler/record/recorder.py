"""Writes what happened beside each spec: `X.status.yaml` and `X.decisions.yaml` (replaced atomically) and
`X.evidence.jsonl`. The decision records live in their own file: they were most of each status file, which a
person should read at a glance."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.api.status import ResourceStatus
from reconciler.record.atomic import write_atomic
from reconciler.load.desired import SPEC_SUFFIXES, output_stem
from reconciler.record.evidence import EvidenceLog

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
    def __init__(self, root: Path) -> None:
        self.root = root
        self._statuses: dict[str, dict[ResourceKey, ResourceStatus]] = defaultdict(dict)
        self._file_errors: dict[str, list[str]] = {}
        self._written: dict[str, tuple[dict[str, Any], _Identity]] = {}  # what each status file holds, as data
        self._logs: dict[str, EvidenceLog] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # computing a status file and writing it is one step
        self.revision: str | None = None  # of the desired state's source (`main@sha1:...`), when it is in git

    def evidence(self, spec_file: str, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            log = self._logs.get(spec_file)
            if log is None:
                log = self._logs[spec_file] = EvidenceLog(self.root / sibling(spec_file, ".evidence.jsonl"))
        revision = self.revision
        return log.append({**record, "revision": revision} if revision else record)

    def set_status(self, spec_file: str, status: ResourceStatus) -> None:
        key = ResourceKey(status.kind, status.name)
        with self._lock:
            for file, statuses in self._statuses.items():
                if file != spec_file:
                    statuses.pop(key, None)
            self._statuses[spec_file][key] = status

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
                    written.unlink(missing_ok=True)

    def host_profile(self, body: dict[str, Any]) -> None:
        """Publish the host profile (the caller observes it at most every 30 s); unchanged content is not rewritten."""
        with self._flush_lock:
            self._write(HOST_PROFILE_FILE, body, STATUS_HEADER)

    def flush(self, spec_files: set[str]) -> None:
        """Rewrite the status file of each given spec file whose content changed; drop those owning nothing."""
        for spec_file in sorted(spec_files):
            with self._flush_lock:  # read and write as one step, or a slower writer could put back older content
                self._flush_one(spec_file)

    def _flush_one(self, spec_file: str) -> None:
        with self._lock:
            statuses = sorted(self._statuses.get(spec_file, {}).values(), key=lambda s: (s.kind, s.name))
            errors = self._file_errors.get(spec_file, [])
        revision = {"revision": self.revision} if self.revision else {}
        decided = [{"kind": s.kind, "name": s.name, "decisionRecord": s.decision_record} for s in statuses if s.decision_record]
        if decided:
            self._write(sibling(spec_file, DECISIONS), {"apiVersion": API_VERSION, "kind": "DecisionRecords",
                                                        "source": spec_file, **revision, "resources": decided},
                        DECISIONS_HEADER)
        else:
            self._remove(sibling(spec_file, DECISIONS))
        if not statuses and not errors:
            self._remove(sibling(spec_file, STATUS))  # nothing of this file is owned any more
            return
        self._write(sibling(spec_file, STATUS), {
            "apiVersion": API_VERSION,
            "kind": "StatusReport",
            "source": spec_file,
            **revision,
            "errors": errors,
            "resources": [s.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"decision_record"})
                          for s in statuses],
        }, STATUS_HEADER)

    def _remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
        self._written.pop(name, None)

    def _write(self, name: str, body: dict[str, Any], header: str) -> None:
        """Write `body` unless the file holds it already: compared as data (serialising every status of a file on
        every reconcile was most of an idle daemon's CPU), and the file observed, not trusted to be as written: a
        hand edit, a removal or a restore is undone on the next pass. Flush lock held."""
        target = self.root / name
        if self._written.get(name) == (body, _identity(target)):
            return
        write_atomic(target, header + yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True))
        self._written[name] = (body, _identity(target))


_Identity = tuple[int, int, int, int] | None


def _identity(path: Path) -> _Identity:
    """Which bytes a file holds, as far as a stat tells: any write or replacement changes its inode, size or
    change time (which, unlike the modification time, no user can set back)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns
