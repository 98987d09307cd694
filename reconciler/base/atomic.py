"""Crash-safe, link-safe file writes: every file the reconciler creates, appends to, replaces or removes.

Status files are read by people and tools at any moment, and the machine may lose power or fill its disk
mid-write: a reader must see either the old content or the new, never a truncated mix, and a failed write must
leave no temp files behind to accumulate.

The desired-state folder is written by whoever edits it (or pushes to the branch it follows; git stores
symlinks), while the reconciler may run as root. So no name it writes is trusted: the final component is never
followed (``O_NOFOLLOW``), a temp file is created exclusively and renamed, an existing target must be a regular
file, and nothing is opened that could block (a FIFO: ``O_NONBLOCK``, then ``fstat``). Given ``root``, the
folders between it and the file are opened one by one relative to each other, never following a link, so a
parent swapped for a link cannot redirect the write either; ``root`` itself is followed (a GitOps root is a link).
Anything else is refused with ``UnsafeFile``, never written through and never removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from reconciler.base.file_types import file_type

_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# what opening a planted name answers: a link (ELOOP), a folder (EISDIR), a FIFO without a reader (ENXIO)
_PLANTED = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a folder", errno.ENXIO: "a FIFO or socket"}


class UnsafeFile(OSError):
    """A link or a non-regular file where the reconciler writes: refused, never written through or removed."""

    def __init__(self, path: Path, what: str, expected: str = "a regular file") -> None:
        super().__init__(errno.EPERM, f"{path} is {what}, not {expected}: refused (never written through or "
                                      "removed); remove it to let the reconciler write there")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644, *, root: Path | None = None) -> None:
    """Replace ``path`` with ``data`` (str is encoded as UTF-8) all at once.

    The temp file lives in the target's directory because a rename is only atomic within one filesystem; its
    dot-prefixed name keeps it out of globs and tells a human which target a stray one belonged to. ``mode`` is
    applied exactly (the umask does not narrow it) before the data is synced, so the permissions are as durable
    as the content. Without ``root`` missing parent folders are created; with it they must exist (a folder a
    person removed is not brought back).
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if root is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    with _directory(path.parent, root) as directory:
        _require_regular_or_absent(directory, path)
        tmp, fd = _create_exclusive(directory, path.name)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(payload)
                file.flush()
                os.fchmod(file.fileno(), mode)
                os.fsync(file.fileno())
            _require_regular_or_absent(directory, path)
            os.replace(tmp, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=directory)
            raise
        os.fsync(directory)


def holds(path: Path, data: bytes | str, mode: int = 0o644, *, root: Path | None = None) -> bool:
    """Whether ``path`` is a regular file holding exactly ``data`` with permissions ``mode``: replacing it with
    them would change nothing (and cost a sync). A link, a special file or an unreadable one: False, so the
    write that follows refuses it as it would have."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with os.fdopen(open_regular(path, os.O_RDONLY, root=root), "rb") as file:
            found = os.fstat(file.fileno())
            if found.st_size != len(payload) or stat.S_IMODE(found.st_mode) != mode:
                return False
            return file.read(len(payload) + 1) == payload
    except OSError:
        return False


def open_regular(path: Path, flags: int, mode: int = 0o644, *, root: Path | None = None) -> int:
    """A descriptor on ``path`` (``flags`` as for os.open), which is a regular file and was reached without links."""
    with _directory(path.parent, root) as directory:
        try:
            fd = os.open(path.name, flags | _NO_FOLLOW, mode, dir_fd=directory)
        except OSError as error:
            if error.errno in _PLANTED:
                raise UnsafeFile(path, _PLANTED[error.errno]) from None
            raise
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                raise UnsafeFile(path, file_type(found.st_mode))
            if flags & (os.O_WRONLY | os.O_RDWR) and found.st_nlink > 1:  # another name for a file elsewhere
                raise UnsafeFile(path, f"a hard link ({found.st_nlink} names)", "a file of its own")
        except BaseException:
            os.close(fd)
            raise
        return fd


def read_regular(path: Path, *, root: Path | None = None) -> bytes:
    """The content of regular file ``path``; a link or a special file is refused, and a FIFO never blocks."""
    with os.fdopen(open_regular(path, os.O_RDONLY, root=root), "rb") as file:
        return file.read()


def read_bounded(path: Path, limit: int, *, root: Path | None = None) -> bytes:
    """As read_regular, for a file someone else writes: ValueError past ``limit`` bytes, with no more than that read."""
    with os.fdopen(open_regular(path, os.O_RDONLY, root=root), "rb") as file:
        held = file.read(limit + 1)
    if len(held) > limit:
        raise ValueError(f"{path}: over {limit} bytes")
    return held


def regular_size(path: Path, *, root: Path | None = None) -> int | None:
    """``path``'s size, None when it (or its folder) is not there; a link or a special file is refused."""
    try:
        with _directory(path.parent, root) as directory:
            return _require_regular_or_absent(directory, path)
    except FileNotFoundError:
        return None


def remove_regular(path: Path, *, root: Path | None = None) -> None:
    """Remove ``path`` if it is there (its folder too may be gone); a link or a special file is refused, kept."""
    try:
        with _directory(path.parent, root) as directory:
            if _require_regular_or_absent(directory, path) is not None:
                os.unlink(path.name, dir_fd=directory)
    except FileNotFoundError:
        return


def rename_regular(source: Path, target: Path, *, root: Path | None = None) -> None:
    """Rename ``source`` over ``target`` in the same folder; both must be regular files (``target`` may be absent)."""
    if source.parent != target.parent:
        raise ValueError(f"{source} and {target} must share a folder")
    with _directory(source.parent, root) as directory:
        if _require_regular_or_absent(directory, source) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(source))
        _require_regular_or_absent(directory, target)
        os.replace(source.name, target.name, src_dir_fd=directory, dst_dir_fd=directory)


def fsync_dir(directory: Path, *, root: Path | None = None) -> None:
    """Make a rename or a new name in ``directory`` durable: until then a crash can undo it."""
    with _directory(directory, root) as fd:
        os.fsync(fd)


@contextlib.contextmanager
def _directory(path: Path, root: Path | None) -> Iterator[int]:
    """A descriptor on folder ``path``: opened as named, or, under ``root``, component by component without links."""
    if root is None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        parts = path.relative_to(root).parts  # ValueError for a path outside root: a caller's bug
        if ".." in parts:
            raise ValueError(f"{path} leaves {root}")
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        walked = root
        for part in parts:
            walked = walked / part
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW, dir_fd=fd)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeFile(walked, "a symbolic link or a file", "a folder") from None
                raise
            os.close(fd)
            fd = inner
    try:
        yield fd
    finally:
        os.close(fd)


def _require_regular_or_absent(directory: int, path: Path) -> int | None:
    """The size of regular file ``path`` (its name in ``directory``), None when there is none; else UnsafeFile."""
    try:
        found = os.stat(path.name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(found.st_mode):
        raise UnsafeFile(path, file_type(found.st_mode))
    return found.st_size


def _create_exclusive(directory: int, name: str) -> tuple[str, int]:
    """A new temp file beside ``name``: O_EXCL, so nothing planted under the temp name is ever opened."""
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o600, dir_fd=directory)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temp name beside {name}")
