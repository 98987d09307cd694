"""Bounded per-workload log files: the current run and the previous one, each capped in size."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.record.atomic import open_regular, regular_size, rename_regular

DEFAULT_MAX_BYTES = 8 * 1024 * 1024


class LogStore:
    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def path(self, name: str, previous: bool = False) -> Path:
        return self.directory / (f"{name}.previous.log" if previous else f"{name}.log")

    def rotate(self, name: str) -> None:
        """Keep the last run's log as `previous` (the crash's story); the next run starts a fresh one."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        current = self.path(name)
        if regular_size(current):  # a failed start's empty log must not bury the crash's
            rename_regular(current, self.path(name, previous=True))

    def open_for_new_run(self, name: str) -> int:
        self.rotate(name)
        return open_regular(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def trim(self, name: str) -> None:
        """Cap a live log: keep its newest half. The writer appends (O_APPEND), so it carries on at the new end."""
        current = self.path(name)
        size = regular_size(current)
        if size is None or size <= self.max_bytes:
            return
        keep = self.max_bytes // 2
        with os.fdopen(open_regular(current, os.O_RDWR), "r+b") as handle:
            handle.seek(size - keep)
            tail = handle.read(keep)
            handle.seek(0)
            handle.truncate()
            handle.write(b"[... earlier output trimmed by the reconciler ...]\n" + tail)
