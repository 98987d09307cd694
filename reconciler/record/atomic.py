"""Crash-safe file replacement.

Status files are read by people and tools at any moment, and the machine may
lose power or fill its disk mid-write: a reader must see either the old
content or the new, never a truncated mix, and a failed write must leave no
temp files behind to accumulate.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (str is encoded as UTF-8) all at once.

    The temp file lives in the target's directory because ``os.replace`` is
    only atomic within one filesystem; its dot-prefixed name keeps it out of
    globs and tells a human which target a stray one belonged to. ``mode`` is
    applied exactly (the umask does not narrow it) before the data is synced,
    so the permissions are as durable as the content.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new name in ``directory`` durable: until then a crash can undo it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
