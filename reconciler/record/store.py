"""The reconciler's memory of each resource it owns, in its state directory (0700, atomic writes).

This, not the status files, is what later passes trust: status files are output only.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.base.atomic import write_atomic


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "resources"

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
