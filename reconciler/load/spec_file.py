"""Reading one spec file as hostile input: whoever can write the folder (or push to its branch: git stores
symlinks) chooses what each name is.

Only a regular file that really lies inside the desired-state folder is read. A link leading out of it is refused
before anything opens it, so its target's bytes are never quoted in a status file, `validate` output or a log. A
FIFO, socket or device is never opened: opening a FIFO for reading blocks until a writer comes, which stalled every
pass, and opening a device can act on it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from reconciler.base.file_types import file_type

# O_NONBLOCK: a file swapped for a FIFO after it was judged must not block the open; on a regular file it changes
# nothing. O_NOFOLLOW: the resolved path has no link left in its last part, and a link put there since is refused.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


class SpecRefused(Exception):
    """Why a spec file is not read (its content is never part of the reason)."""


def read_spec_file(path: Path, real_root: str, limit: int) -> bytes:
    """At most `limit` bytes of the regular file `path` inside the folder whose resolved path is `real_root`.

    Raises SpecRefused for a link out of the folder or a file that is not regular, OSError when it cannot be read.
    """
    real = os.path.realpath(path)
    if not _inside(real, real_root):
        raise SpecRefused("refused, not opened: it is a symbolic link to a file outside the desired-state folder "
                          "(a spec file must lie inside the folder)")
    judged = os.stat(real, follow_symlinks=False)
    if not stat.S_ISREG(judged.st_mode):
        raise SpecRefused(f"refused, not opened: it is {file_type(judged.st_mode)}, not a regular file")
    descriptor = os.open(real, _READ_FLAGS)
    try:
        # observed, not trusted: what was opened must be the file judged above, still inside the folder
        # (a folder on its path swapped for a link between the two would otherwise lead the open elsewhere)
        opened = os.fstat(descriptor)
        where = os.readlink(f"/proc/self/fd/{descriptor}")
        if (opened.st_dev, opened.st_ino) != (judged.st_dev, judged.st_ino) or not _inside(where, real_root):
            raise SpecRefused("refused: it was replaced while being opened; read again on the next pass")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read(limit)
    finally:
        os.close(descriptor)


def _inside(path: str, real_root: str) -> bool:
    return os.path.commonpath([path, real_root]) == real_root
