"""Writes what happened beside each spec: `X.status.yaml` (replaced atomically) and `X.evidence.jsonl`."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.api.status import ResourceStatus
from reconciler.record.atomic import write_atomic
from reconciler.record.evidence import EvidenceLog

STATUS_HEADER = "# Written by the reconciler after each pass. Edits are overwritten and never read back.\n"


def sibling(spec_file: str, suffix: str) -> str:
    """chat.yaml -> chat.status.yaml / chat.evidence.jsonl."""
    stem = spec_file.rsplit(".", 1)[0]
    return f"{stem}{suffix}"


class Recorder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._statuses: dict[str, dict[ResourceKey, ResourceStatus]] = defaultdict(dict)
        self._file_errors: dict[str, list[str]] = {}
        self._written: dict[str, str] = {}
        self._logs: dict[str, EvidenceLog] = {}
        self._lock = threading.Lock()

    def evidence(self, spec_file: str, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            log = self._logs.get(spec_file)
            if log is None:
                log = self._logs[spec_file] = EvidenceLog(self.root / sibling(spec_file, ".evidence.jsonl"))
        return log.append(record)

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

    def set_file_errors(self, spec_file: str, errors: list[str]) -> None:
        with self._lock:
            self._file_errors[spec_file] = errors

    def flush(self, spec_files: set[str]) -> None:
        """Rewrite the status file of each given spec file whose content changed; drop those of vanished specs."""
        for spec_file in sorted(spec_files):
            with self._lock:
                statuses = sorted(self._statuses.get(spec_file, {}).values(), key=lambda s: (s.kind, s.name))
                errors = self._file_errors.get(spec_file, [])
            target = self.root / sibling(spec_file, ".status.yaml")
            if not statuses and not errors:
                target.unlink(missing_ok=True)  # nothing of this file is owned any more
                self._written.pop(spec_file, None)
                continue
            body = {
                "apiVersion": API_VERSION,
                "kind": "StatusReport",
                "source": spec_file,
                "errors": errors,
                "resources": [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in statuses],
            }
            text = STATUS_HEADER + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
            if self._written.get(spec_file) != text or not target.exists():
                write_atomic(target, text)
                self._written[spec_file] = text
