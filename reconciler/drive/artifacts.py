"""Model artifacts: a cache addressed by sha256, filled by a resumable, verified fetch.

A model is known by its digest, not by its name or URL. A file sits in `sha256/<hex>` only after its bytes
hashed to <hex>, and a sidecar keeps the stat it had then, so each pass trusts it with one stat call
instead of re-reading gigabytes. Downloads grow in `partial/<hex>.part` and outlive a cut connection, so
the next attempt resumes with a Range request instead of starting over.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from reconciler.base.atomic import fsync_dir, write_atomic
from reconciler.base.redact import redact, scrub
from reconciler.base.sdk_errors import request_errors
from reconciler.observe.host import NotRegularFile, open_regular

if TYPE_CHECKING:  # requests loads with the first download (sdk_errors says why)
    import requests

CHUNK = 1 << 20
# urllib3 drops a read's bytes when the connection ends inside it: small network reads lose little to a cut
NET_CHUNK = 1 << 16
DEFAULT_MARGIN = 512 << 20  # left free after a download, so logs and status files can still be written
PROGRESS_INTERVAL = 0.25
_HEX = re.compile(r"[0-9a-f]{64}")
_CONNECTION_REPR = re.compile(r"^\w+\(host=[^)]*\):\s*")  # urllib3's "HTTPConnection(host='h', port=1): "


class ArtifactError(Exception):
    """A fetch that did not produce a verified file; `reason` is a condition reason (CamelCase)."""

    reason = "ArtifactError"


class InsufficientDisk(ArtifactError):
    reason = "InsufficientDisk"

    def __init__(self, needed: int, free: int, path: Path) -> None:
        super().__init__(f"not enough free disk at {path}: {needed} bytes needed (download and margin), {free} free")
        self.needed, self.free, self.path = needed, free, path


class InvalidArtifact(ArtifactError):
    """The bytes are not the artifact asked for; `what` is "sha256" or "size"."""

    reason = "InvalidArtifact"

    def __init__(self, expected: str, actual: str, url: str, what: str = "sha256") -> None:
        shown = redact(url)
        super().__init__(f"{shown}: {what} is {actual}, expected {expected}")
        self.expected, self.actual, self.url, self.what = expected, actual, shown, what


class SourceUnreachable(ArtifactError):
    """The source could not deliver (now); a partial download is kept for the next attempt to resume."""

    reason = "SourceUnreachable"

    def __init__(self, url: str, detail: str, status: int | None = None) -> None:
        shown = redact(url)
        shown_detail = re.sub(r" at 0x[0-9a-f]+", "", scrub(detail, url))  # addresses would make each retry's differ
        super().__init__(f"cannot fetch {shown}: {shown_detail}")
        self.url, self.detail, self.status = shown, shown_detail, status


class SourceRefused(ArtifactError):
    """The Policy does not allow fetching from the source's host or the addresses it resolves to: nothing was sent."""

    reason = "SourceRefused"

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class CacheEntry:
    sha256: str
    path: Path
    size: int
    verified_at: float | None  # time of the verification the file still matches; None: must be re-verified


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


class ArtifactCache:
    def __init__(self, root: Path, free_bytes: Callable[[Path], int] = _disk_free) -> None:
        self.root = root
        self.free_bytes = free_bytes

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / normalize_digest(sha256)

    def partial_path(self, sha256: str) -> Path:
        return self.root / "partial" / f"{normalize_digest(sha256)}.part"

    def lookup(self, sha256: str, size: int | None = None) -> Path | None:
        path = self.path(sha256)
        try:
            found = path.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(found.st_mode) or (size is not None and found.st_size != size):
            return None
        return path if self._verified_at(path, found) is not None else None

    def verify(self, sha256: str) -> bool:
        path = self.path(sha256)
        try:
            # stat before hashing: a change made while hashing then fails the next lookup
            before = path.stat(follow_symlinks=False)
            matches = stat.S_ISREG(before.st_mode) and _hash_file(path) == normalize_digest(sha256)
        except FileNotFoundError:
            matches = False
        if not matches:
            self.remove(sha256, keep_partial=True)
            return False
        self._record(path, before)
        return True

    def entries(self) -> list[CacheEntry]:
        directory = self.root / "sha256"
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.iterdir()):
            if _HEX.fullmatch(path.name) and path.is_file():
                info = path.stat()
                found.append(CacheEntry(path.name, path, info.st_size, self._verified_at(path, info)))
        return found

    def due_for_rehash(self, max_age: float, now: float) -> list[str]:
        """Entries last hashed in full more than `max_age` seconds ago (wall time: the schedule outlives restarts).
        Size, mtime and inode catch most damage each pass; only hashing catches bytes changed in place."""
        return [entry.sha256 for entry in self.entries()
                if entry.verified_at is None or now - entry.verified_at >= max_age]

    def remove(self, sha256: str, keep_partial: bool = False) -> None:
        path = self.path(sha256)
        doomed = [path, _sidecar(path)] + ([] if keep_partial else [self.partial_path(sha256)])
        for each in doomed:
            each.unlink(missing_ok=True)

    def partial_size(self, sha256: str) -> int:
        try:
            return self.partial_path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def prepare(self) -> None:
        """Verified models are readable by workloads running as other users, never writable: the folders to them are
        passable (not listable), the files read-only to others; a download in progress stays the reconciler's."""
        for directory, mode in ((self.root, 0o711), (self.root / "sha256", 0o711), (self.root / "partial", 0o700)):
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            directory.chmod(mode)

    def install(self, sha256: str, partial: Path) -> Path:
        """Move a verified partial into place; the name appears only once the bytes are durable."""
        path = self.path(sha256)
        partial.chmod(0o644)
        os.replace(partial, path)
        fsync_dir(path.parent)
        self._record(path, path.stat())
        return path

    def _record(self, path: Path, info: os.stat_result) -> None:
        seen = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino, "verified_at": time.time()}
        write_atomic(_sidecar(path), json.dumps(seen))

    def _verified_at(self, path: Path, info: os.stat_result) -> float | None:
        try:
            seen = json.loads(_sidecar(path).read_text())
            same = (seen["size"], seen["mtime_ns"], seen["inode"]) == (info.st_size, info.st_mtime_ns, info.st_ino)
            return float(seen["verified_at"]) if same else None
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _sidecar(path: Path) -> Path:
    return path.with_name(f"{path.name}.verified")


def normalize_digest(sha256: str) -> str:
    """Lowercase hex; a "sha256:" prefix, as OCI and Hugging Face write digests, is accepted."""
    digest = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX.fullmatch(digest):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return digest


def verify_file(path: Path, sha256: str) -> str:
    """Hash a local file in place (it is read in full) and return its digest; raise unless it is `sha256`."""
    expected = normalize_digest(sha256)
    try:
        actual = _hash_file(path)
    except OSError as error:
        raise SourceUnreachable(str(path), error.strerror or str(error)) from None
    if actual != expected:
        raise InvalidArtifact(expected, actual, str(path))
    return actual


def _hash_file(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def request_error(error: requests.RequestException) -> str:
    """What went wrong, without the library's wrappers: 'ConnectionError: Failed to establish a new connection:
    [Errno 111] Connection refused', not three nested reprs naming connection-pool classes."""
    cause = error.args[0] if error.args else error
    reason = getattr(cause, "reason", None) or cause
    return f"{type(error).__name__}: {_CONNECTION_REPR.sub('', str(reason))}"


_locks: dict[tuple[Path, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _digest_lock(cache: ArtifactCache, digest: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((cache.root.resolve(), digest), threading.Lock())


def fetch(
    url: str, sha256: str, cache: ArtifactCache, *, size: int | None = None, margin: int = DEFAULT_MARGIN,
    progress: Callable[[int, int | None], None] | None = None, timeout: float = 30.0,
    session: requests.Session | None = None,
) -> Path:
    """Return the cached, verified file for `sha256`, fetching it from `url` (https, http, file) if needed."""
    digest = normalize_digest(sha256)
    with _digest_lock(cache, digest):  # a second caller waits, then finds it cached
        cached = cache.lookup(digest, size)
        if cached is not None:
            return cached
        if cache.path(digest).exists() and cache.verify(digest) and cache.lookup(digest, size):
            return cache.path(digest)  # a file whose stat changed but whose bytes did not
        cache.prepare()
        import requests

        with nullcontext(session) if session is not None else requests.Session() as http:
            return _download(url, digest, cache, size, margin, _Progress(progress), timeout, http)


class _Progress:
    def __init__(self, report: Callable[[int, int | None], None] | None) -> None:
        self._report, self._last, self.total = report, 0.0, None

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if self._report and (final or now - self._last >= PROGRESS_INTERVAL):
            self._last = now
            self._report(done, self.total)


@dataclass
class _Opened:
    start: int  # where the body begins: the resume offset, or 0 when the source sends everything again
    total: int | None  # the artifact's full length, when the source says
    chunks: Iterator[bytes]
    close: Callable[[], None]


def _download(
    url: str, digest: str, cache: ArtifactCache, size: int | None, margin: int, progress: _Progress,
    timeout: float, http: requests.Session,
) -> Path:
    partial = cache.partial_path(digest)
    hasher, have = _hash_partial(partial)
    if size is not None and have > size:  # longer than the artifact: not a prefix of it
        partial.unlink()
        hasher, have = hashlib.sha256(), 0
    if size is not None:
        _check_disk(cache, size, have, margin)  # before any network, and before a partial exists
    source = _open_file(url, have) if urlsplit(url).scheme == "file" else _open_http(url, have, http, timeout)
    try:
        if size is not None and source.total is not None and source.total != size:
            partial.unlink(missing_ok=True)
            raise InvalidArtifact(str(size), str(source.total), url, what="size")
        if size is None:
            _check_disk(cache, source.total or 0, have, margin)
        if source.start == 0:
            hasher, have = hashlib.sha256(), 0
        progress.total = size if size is not None else source.total
        try:
            done = _receive(source, partial, hasher, have, size, url, progress)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            partial.unlink(missing_ok=True)  # a full disk hurts every workload more than a lost partial
            needed = (progress.total or 0) - have + margin
            raise InsufficientDisk(needed, cache.free_bytes(cache.root), cache.root) from None
    finally:
        source.close()
    progress(done, final=True)
    if size is not None and done != size:
        partial.unlink()
        raise InvalidArtifact(str(size), str(done), url, what="size")
    if hasher.hexdigest() != digest:
        partial.unlink()
        raise InvalidArtifact(digest, hasher.hexdigest(), url)
    return cache.install(digest, partial)


def _hash_partial(partial: Path) -> tuple[hashlib._Hash, int]:
    """The hasher fed with what a previous attempt got, ready to take the rest, and the count of bytes."""
    try:
        with partial.open("rb") as file:
            return hashlib.file_digest(file, "sha256"), file.tell()
    except FileNotFoundError:
        return hashlib.sha256(), 0


def _check_disk(cache: ArtifactCache, total: int, have: int, margin: int) -> None:
    needed = max(total - have, 0) + margin
    free = cache.free_bytes(cache.root)
    if free < needed:
        raise InsufficientDisk(needed, free, cache.root)


def _open_http(url: str, offset: int, http: requests.Session, timeout: float) -> _Opened:
    headers = {"Accept-Encoding": "identity"}  # the bytes hashed must be the file's, not a compressed form
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = http.get(url, headers=headers, stream=True, timeout=timeout)
    except SourceRefused as refused:
        raise SourceRefused(f"{redact(url)}: {refused.why}") from None
    except request_errors.RequestException as error:
        raise SourceUnreachable(url, request_error(error)) from None
    code = response.status_code
    if code == 416 and offset:  # nothing past the partial: it may be complete already
        response.close()
        return _Opened(offset, None, iter(()), lambda: None)
    if code == 200 or (code == 206 and offset):  # 200 to a Range: the server starts over
        start = offset if code == 206 else 0
        length = response.headers.get("Content-Length", "")
        total = start + int(length) if length.isdigit() else None
        return _Opened(start, total, response.iter_content(NET_CHUNK), response.close)
    response.close()
    raise SourceUnreachable(url, f"HTTP {code} {response.reason}", status=code)


def _open_file(url: str, offset: int) -> _Opened:
    path = Path(unquote(urlsplit(url).path))  # what urllib.request's url2pathname does on POSIX, without its 7 ms import
    try:
        file = open_regular(path)
    except NotRegularFile as refused:
        raise SourceRefused(str(refused)) from None
    except OSError as error:
        raise SourceUnreachable(url, error.strerror or str(error)) from None
    total = os.fstat(file.fileno()).st_size
    start = offset if offset <= total else 0
    file.seek(start)
    return _Opened(start, total, iter(lambda: file.read(CHUNK), b""), file.close)


def _receive(
    source: _Opened, partial: Path, hasher: hashlib._Hash, have: int, size: int | None, url: str,
    progress: _Progress,
) -> int:
    done = have
    with partial.open("ab" if source.start else "wb") as file:
        try:
            for chunk in source.chunks:
                done += len(chunk)
                if size is not None and done > size:
                    partial.unlink()
                    raise InvalidArtifact(str(size), f"more than {size}", url, what="size")
                file.write(chunk)
                hasher.update(chunk)
                progress(done)
        except request_errors.RequestException as error:
            raise SourceUnreachable(url, f"transfer cut after {done} bytes: {type(error).__name__}") from None
        if source.total is not None and done < source.total:
            raise SourceUnreachable(url, f"transfer cut after {done} of {source.total} bytes")
        file.flush()
        os.fchmod(file.fileno(), 0o644)
        os.fsync(file.fileno())
    return done

