"""Bounded per-workload log files: the current run and the previous one, each capped in size; read back by their end
or followed as they grow."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler.base.atomic import open_regular, regular_size, rename_regular

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


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines, reading only the end of a big file."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:] if lines else data.decode("utf-8", "replace").splitlines()


def follow(path: Path, poll_seconds: float = 0.2) -> Iterator[str]:
    """New output as it is written; survives the log being trimmed (truncated) or replaced by a new run."""
    handle = path.open("rb")
    handle.seek(0, os.SEEK_END)
    identity = os.fstat(handle.fileno()).st_ino
    while True:
        chunk = handle.read()
        if chunk:
            yield chunk.decode("utf-8", "replace")
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            stat = None
        if stat is not None and (stat.st_ino != identity or stat.st_size < handle.tell()):
            handle.close()
            handle = path.open("rb")  # a new run's log, or trimmed: read it from its start
            identity = os.fstat(handle.fileno()).st_ino
            continue
        time.sleep(poll_seconds)
