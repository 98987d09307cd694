"""What each resource was last reconciled to: read by every plan, saved to the state store when it changes."""

from __future__ import annotations

import threading

from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.record.store import StateStore


class Remembered:
    """The records of one state directory, in memory and on disk; safe to use from every worker at once."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._records = store.load_all()

    def get(self, key: ResourceKey) -> ResourceRecord | None:
        with self._lock:
            return self._records.get(key)

    def all(self) -> list[ResourceRecord]:
        with self._lock:
            return list(self._records.values())

    def snapshot(self) -> dict[ResourceKey, ResourceRecord]:
        with self._lock:
            return dict(self._records)

    def remember(self, record: ResourceRecord) -> None:
        """Keep `record`; it is written (atomically) only when it differs from the one kept."""
        with self._lock:
            unchanged = self._records.get(record.key) == record
            self._records[record.key] = record
        if not unchanged:
            self.store.save(record)

    def forget(self, key: ResourceKey) -> None:
        """Drop it from memory (its file is the caller's to delete, once what ran is gone)."""
        with self._lock:
            self._records.pop(key, None)
