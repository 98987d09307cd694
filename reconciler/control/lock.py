"""One mutating reconciler per state directory: two would race on the same processes and logs."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StateDirBusy(Exception):
    pass


@contextmanager
def exclusive(state_dir: Path, command: str) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / "lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise StateDirBusy(f"{state_dir} is in use by {holder}; stop it first (the daemon applies changes itself)") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"pid {os.getpid()} ('reconciler {command}')\n".encode())
        yield
    finally:
        os.close(descriptor)
