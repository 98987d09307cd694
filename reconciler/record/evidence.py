"""Append-only, hash-chained JSON-lines evidence of what the reconciler did.

Each line carries the SHA-256 of the line before it, so editing, inserting or
deleting a line anywhere but at the very end breaks the chain at the next line
and ``verify_chain`` can name it. Lines are fsynced one by one because the log
must survive the crash it may be needed to explain; a line torn by that crash
is cut off on the next append and the cut is recorded, never hidden.
"""

from __future__ import annotations

import hashlib
import json
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.base.atomic import (
    UnsafeFile, fsync_dir, open_regular, regular_size, remove_regular, rename_regular, write_atomic,
)

GENESIS = "0" * 64
_RESERVED = frozenset({"prev", "repaired"})
_TAIL_WINDOW = 64 * 1024
_LOOK_BACK = 2 * 1_048_576  # two files at the default rotation size
KEEP = 3  # rotated files kept


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify_chain``; ``records`` counts the lines verified before any break."""

    ok: bool
    records: int
    broken_file: Path | None = None
    broken_line: int | None = None
    reason: str | None = None


class EvidenceLog:
    """Appends to one chain. Another process may append to the same chain (`reconciler forget` appends to the
    host log while the daemon does): each append holds an flock(2) on the live file and re-reads the tail unless
    the file is exactly as this writer left it, so the chain never forks.

    ``root``: the folder the log lies in is someone else's (the desired state): every file of the chain is reached
    from there without following links, and one that is a link or a special file is refused (``UnsafeFile``).
    """

    def __init__(self, path: Path, max_bytes: int = 1_048_576, keep: int = KEEP, *, root: Path | None = None) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError("max_bytes and keep must be at least 1")
        self.path = path
        self.root = root
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._left: tuple[tuple[int, int, int], str] | None = None  # (the live file's identity, its last line's hash)

    def append(self, record: Mapping[str, Any], before_write: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Durably append ``record`` and return it as written, with ``prev`` (and ``repaired``) added.
        ``before_write``: given the line's hash once it is known, before the line is written (under the chain's lock),
        so what it records can never come after the line on disk."""
        clash = record.keys() & _RESERVED
        if clash:
            raise ValueError(f"evidence record must not set {sorted(clash)}: the log owns them")
        with self._lock:
            while True:
                with _live_locked(self.path, self.root) as (fd, created):
                    written = self._append_locked(fd, record, before_write)
                if written is None:  # rotated: the fresh live file is opened, locked and read again
                    continue
                if created:
                    fsync_dir(self.path.parent, root=self.root)  # the new name must be as durable as the line in it
                return written

    def _append_locked(self, fd: int, record: Mapping[str, Any],
                       before_write: Callable[[str], None] | None) -> dict[str, Any] | None:
        size = os.fstat(fd).st_size
        left, self._left = self._left, None  # until the line is known to be on disk, the next append re-reads
        if left is not None and left[0] == _identity(fd):
            prev, valid_end, torn = left[1], size, 0
        else:
            prev, valid_end, torn = self._recover()
        written = dict(record)
        if torn:
            written["repaired"] = torn
        written["prev"] = prev
        line = (_encode(written) + "\n").encode("utf-8")
        if torn:
            os.ftruncate(fd, valid_end)
        if valid_end and valid_end + len(line) > self.max_bytes:
            self._rotate()
            return None
        if before_write is not None:
            before_write(_hash(line[:-1]))
        # One write with O_APPEND: the line lands whole at the end or (disk full) short.
        if os.write(fd, line) != len(line):  # the kernel writes short only when it runs out of room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        os.fsync(fd)
        self._left = (_identity(fd), _hash(line[:-1]))
        return written

    def _recover(self) -> tuple[str, int, int]:
        """Return (hash of the last complete line, where that line ends, torn bytes after it)."""
        last, valid_end, torn = _tail(self.path, self.root)
        if last is None:
            # Nothing complete here: a new file, or one that rotation just emptied.
            rotated, _, _ = _tail(_rotated(self.path, 1), self.root)
            return (GENESIS if rotated is None else _hash(rotated)), valid_end, torn
        return _hash(last), valid_end, torn

    def _rotate(self) -> None:
        for n in range(self.keep, 0, -1):
            source = self.path if n == 1 else _rotated(self.path, n - 1)
            if regular_size(source, root=self.root) is not None:
                rename_regular(source, _rotated(self.path, n), root=self.root)


@contextmanager
def _live_locked(path: Path, root: Path | None) -> Iterator[tuple[int, bool]]:
    """(an appending descriptor on the chain's live file, whether this created it), held under flock(2): every
    writer of the chain, appending or rewriting it, in any process, holds it. A file rotated or replaced while this
    waited for the lock is let go and the live one locked instead."""
    while True:
        created = regular_size(path, root=root) is None
        fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644, root=root)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_live(path, fd):
                yield fd, created
                return
        finally:
            os.close(fd)


def _is_live(path: Path, fd: int) -> bool:
    try:
        return os.lstat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def verify_chain(path: Path) -> VerifyResult:
    """Check every retained line, oldest file first; stop at the first broken one.

    The oldest retained line's ``prev`` is accepted as is, because it may point
    into a file rotation has dropped. A torn last line counts as broken: it is
    not a record until the next append has cut it off.
    """
    files = [_rotated(path, n) for n in range(_count_rotated(path), 0, -1)]
    if path.exists():
        files.append(path)
    expected: str | None = None
    records = 0
    for file in files:
        try:
            handle = _reader(file)
        except UnsafeFile as unsafe:
            return VerifyResult(False, records, file, 0, str(unsafe))
        with handle:
            for number, raw in enumerate(handle, start=1):
                reason = _check_line(raw, expected)
                if reason is not None:
                    return VerifyResult(False, records, file, number, reason)
                expected = _hash(raw[:-1])
                records += 1
    return VerifyResult(True, records)


def _check_line(raw: bytes, expected: str | None) -> str | None:
    if not raw.endswith(b"\n"):
        return "torn line: no trailing newline"
    try:
        record = json.loads(raw)
    except ValueError as error:
        return f"not JSON: {error}"
    if not isinstance(record, dict) or not isinstance(record.get("prev"), str):
        return "not a record: a JSON object with a string 'prev' is required"
    if expected is not None and record["prev"] != expected:
        return "prev does not match the hash of the line before"
    return None


def _tail(path: Path, root: Path | None = None) -> tuple[bytes | None, int, int]:
    """Return (last complete line without its newline or None, where it ends, torn bytes after it).

    Reads backwards in windows so a large log costs only its last line to open.
    """
    try:
        with _reader(path, root) as handle:
            size = handle.seek(0, os.SEEK_END)
            pos, buffer = size, b""
            while pos > 0:
                step = min(_TAIL_WINDOW, pos)
                pos -= step
                handle.seek(pos)
                buffer = handle.read(step) + buffer
                end = buffer.rfind(b"\n")
                if end == -1:
                    continue
                start = buffer.rfind(b"\n", 0, end) + 1
                if start > 0 or pos == 0:
                    valid_end = pos + end + 1
                    return buffer[start:end], valid_end, size - valid_end
            return None, 0, size
    except FileNotFoundError:
        return None, 0, 0


def _reader(path: Path, root: Path | None = None) -> BinaryIO:
    """A chain's file, read only when it is a regular file reached without a link (a FIFO would block the reader)."""
    return os.fdopen(open_regular(path, os.O_RDONLY, root=root), "rb")


def _count_rotated(path: Path) -> int:
    count = 0
    while _rotated(path, count + 1).exists():
        count += 1
    return count


def _rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _identity(fd: int) -> tuple[int, int, int]:
    facts = os.fstat(fd)
    return facts.st_ino, facts.st_size, facts.st_mtime_ns


def _hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _encode(record: Mapping[str, Any]) -> str:
    """One line's text: canonical, so the same record always hashes the same."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- whole chains: their files, and rewriting one without some records (`reconciler forget`) ---------------------

EVIDENCE_SUFFIX = ".evidence.jsonl"
HOST_EVIDENCE_FILE = "host.evidence.jsonl"  # in the state directory: what was done to the evidence itself
HOSTED_REQUEST = "hosted-request"  # the gateway's line for each request of a workload placed at a provider
RECHAINED = "rechained"  # the event of the first line of a chain rewritten without some of its records


def chain_files(path: Path) -> list[Path]:
    """The files of ``path``'s chain, oldest first, as ``verify_chain`` reads them."""
    files = [_rotated(path, n) for n in range(_count_rotated(path), 0, -1)]
    return [*files, path] if path.exists() else files


def chain_of(file: Path) -> Path | None:
    """The live file of the chain ``file`` is part of (itself, or the one it is a rotation of); None if it is not."""
    stem, suffix, rotation = file.name.partition(EVIDENCE_SUFFIX)
    if stem and suffix and (rotation == "" or (rotation.startswith(".") and rotation[1:].isdigit())):
        return file.with_name(stem + EVIDENCE_SUFFIX)
    return None


def split_replaced(path: Path) -> tuple[list[Path], list[Path]]:
    """(files a rewrite replaced but a crash left in place, the chain's current files), both oldest first.

    A rewritten chain starts a fresh file with a ``rechained`` line and only then removes the old files, so any
    file older than the newest such head holds nothing but copies of kept lines and lines meant to be gone.
    """
    files = chain_files(path)
    for index in range(len(files) - 1, 0, -1):
        first = _first_record(files[index])
        if first is not None and first.get("event") == RECHAINED:
            return files[:index], files[index:]
    return [], files


def read_records(files: list[Path]) -> list[dict[str, Any] | None]:
    """Every line of ``files`` in order, parsed; None for one that is not a JSON object (``verify_chain`` says why)."""
    records: list[dict[str, Any] | None] = []
    for file in files:
        with _reader(file) as handle:
            records.extend(_parse(raw) for raw in handle)
    return records


def rewrite_chain(path: Path, keep: Callable[[dict[str, Any]], bool], head: Mapping[str, Any]) -> tuple[str, str]:
    """Replace ``path``'s chain by one fresh file: ``head`` (as a ``rechained`` line), then the records ``keep`` accepts.

    Returns (the replaced chain's last hash, which the head names as ``replacedChainEnd``; the new chain's). The
    head's ``prev`` is the hash of the line before it on disk while the old rotated files still exist (GENESIS when
    there are none), so the chain verifies at every step: new file renamed into place, then old files removed,
    oldest first so that any left by a crash stay a contiguous run that ``split_replaced`` recognises.
    It holds the chain's lock from the first read to the last removal, as an append does: a line another process
    (the gateway) appends meanwhile lands after it, in the new chain, never in the file being replaced.
    """
    with _live_locked(path, None):
        replaced, current = split_replaced(path)
        old_files = [*replaced, *current]
        old_end = _last_hash(old_files)
        rotated = [file for file in old_files if file != path]
        prev = _last_hash(rotated[-1:])
        lines = []
        for record in [{**head, "event": RECHAINED, "replacedChainEnd": old_end},
                       *(r for r in read_records(current) if r is not None and keep(r))]:
            line = _encode({**record, "prev": prev})
            lines.append(line + "\n")
            prev = _hash(line.encode("utf-8"))
        write_atomic(path, "".join(lines))
        for file in rotated:
            remove_regular(file)
        fsync_dir(path.parent)
    return old_end, prev


def last_record_about(path: Path, matches: Callable[[dict[str, Any]], bool], root: Path | None = None,
                      mentions: bytes = b"", keep: int = KEEP) -> tuple[dict[str, Any], str] | None:
    """The newest complete line of ``path``'s chain that ``matches``, and its hash; None if there is none within the
    last _LOOK_BACK bytes and ``keep`` rotated files (the folder is someone else's: a file grown past rotation, or
    rotated files added, cost no more to look at), or if a file of the chain is not a regular file (a link, a FIFO,
    a folder): what it holds may be newer than the lines behind it, so the newest line is unknown. ``mentions``:
    bytes a line must hold to be parsed at all (a cheap filter before ``matches``)."""
    budget = _LOOK_BACK
    for n in range(keep + 1):
        file = _rotated(path, n) if n else path
        try:
            handle = _reader(file, root)
        except FileNotFoundError:
            if n:
                return None  # rotated files are numbered without gaps: none older
            continue  # the live file is made by the first append after a rotation
        except UnsafeFile:
            return None
        with handle:
            for raw in _lines_backwards(handle, budget):
                budget -= len(raw) + 1
                record = _parse(raw) if mentions in raw else None
                if record is not None and matches(record):
                    return record, _hash(raw)
        if budget <= 0:
            break
    return None


def _lines_backwards(handle: BinaryIO, budget: int) -> Iterator[bytes]:
    """The complete lines of a file, newest first, read in windows from its end, within ``budget`` bytes (a torn
    last line is no record, and is not among them)."""
    pos = handle.seek(0, os.SEEK_END)
    stop, head, torn = max(0, pos - budget), b"", True
    while pos > stop:
        step = min(_TAIL_WINDOW, pos - stop)
        pos -= step
        handle.seek(pos)
        lines = (handle.read(step) + head).split(b"\n")
        head = lines.pop(0)  # may begin before this window
        if torn and lines:
            lines.pop()  # after the file's last newline: nothing, or a torn line
            torn = False
        yield from reversed(lines)
    if pos == 0 and head and not torn:
        yield head


def _first_record(path: Path) -> dict[str, Any] | None:
    with _reader(path) as handle:
        return _parse(handle.readline())


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _last_hash(files: list[Path]) -> str:
    """The hash of the newest complete line in ``files`` (oldest first), GENESIS if there is none."""
    for file in reversed(files):
        last, _, _ = _tail(file)
        if last is not None:
            return _hash(last)
    return GENESIS

