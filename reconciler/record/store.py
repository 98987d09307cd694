"""The reconciler's memory of each resource it owns, in its state directory (0700, atomic writes).

This, not the status files, is what later passes trust: status files are output only.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.base.atomic import write_atomic


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "resources"
        self.acting = state_dir / "acting"  # the decision being carried out for each resource, by its line's hash

    def _path(self, key: ResourceKey) -> Path:
        return self.directory / f"{key.kind}.{key.name}.json"

    def load_all(self) -> dict[ResourceKey, ResourceRecord]:
        records: dict[ResourceKey, ResourceRecord] = {}
        if not self.directory.is_dir():
            return records
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = ResourceRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError):
                continue  # written atomically, so only a foreign or hand-edited file lands here
            records[record.key] = record
        return records

    def save(self, record: ResourceRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._path(record.key), record.model_dump_json(by_alias=True), mode=0o600)

    def delete(self, key: ResourceKey) -> None:
        self._path(key).unlink(missing_ok=True)

    def vouch(self, key: ResourceKey, decision_hash: str) -> None:
        """Name the decision line the drivers are about to carry out for `key`, before they begin: a restart closes
        only a decision named here, never one someone appended to the evidence (a folder others can write)."""
        self.acting.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._acting(key), decision_hash, mode=0o600)

    def vouched(self, key: ResourceKey) -> str | None:
        try:
            return self._acting(key).read_text(encoding="ascii").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def acting_on(self) -> list[ResourceKey]:
        """The resources a decision was being carried out for when this state directory was last written."""
        try:
            entries = sorted(entry.name for entry in os.scandir(self.acting) if entry.is_file(follow_symlinks=False))
        except FileNotFoundError:
            return []
        return [ResourceKey(kind, name) for kind, _, name in (entry.partition(".") for entry in entries) if name]

    def settled(self, key: ResourceKey) -> None:
        """Its outcome is on record. Not synced: a crash that undoes this leaves a named decision with an outcome
        after it, which no restart closes."""
        self._acting(key).unlink(missing_ok=True)

    def _acting(self, key: ResourceKey) -> Path:
        return self.acting / f"{key.kind}.{key.name}"
