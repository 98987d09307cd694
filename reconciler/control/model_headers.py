"""The GGUF headers of a Model's variants, which size them before anything is downloaded.

A header read is an observation: kept once it succeeds; one that failed is tried again with the fetches' back-off
(5 s doubling to 10 min), never remembered for the daemon's life. A source that cannot be reached (or that the
Policy refuses) leaves its variant unjudged, with the reason, instead of unknown-size. What was read is recorded
in the state directory, so `status` and `describe` show what the daemon saw without a request of their own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.api.kinds import ModelVariant
from reconciler.base.atomic import write_atomic
from reconciler.base.redact import redact, scrub
from reconciler.diff.engines import Blocked
from reconciler.drive.artifacts import SourceRefused
from reconciler.observe.gguf_facts import GgufFacts, GgufMalformed, GgufUnreadable
from reconciler.observe.host import open_regular

if TYPE_CHECKING:
    import requests

log = logging.getLogger("reconciler")

BACKOFF = (5.0, 600.0)  # the fetches' back-off: 5 s, doubling to 10 min


def backoff_delay(attempts: int) -> float:
    return min(BACKOFF[1], BACKOFF[0] * 2 ** (attempts - 1))


@dataclass(frozen=True)
class HeaderRead:
    facts: GgufFacts | None
    unjudged: Blocked | None = None  # the source could not answer: the variant's size cannot be judged yet
    retry_at: float | None = None  # monotonic; None once the facts are read
    attempts: int = 0
    version: tuple[int, int] | None = None  # the local file's size and mtime it was read from: a change is read anew
    invalid: str | None = None  # why the local or cached file is not a GGUF model: kept until the file changes


class Headers:
    def __init__(self, directory: Path, *, network: bool, record: bool,
                 session: Callable[[], requests.Session]) -> None:
        """`network`: remote headers may be requested (not by status or describe, which recall what was recorded);
        `record`: what is read is written under `directory` for them."""
        self.directory, self.network, self.record, self.session = directory, network, record, session
        self._lock = threading.Lock()
        self._reads: dict[tuple[str, str | None], HeaderRead] = {}

    def read(self, variant: ModelVariant, local: Path | None) -> HeaderRead:
        """The header of `local` (the cached or local file) when given, else of the variant's URL."""
        key, version = (variant.source, variant.sha256), _version(local)
        with self._lock:
            known = self._reads.get(key)
        if known is not None and known.version != version:
            known = None
        if known is not None and (known.retry_at is None or time.monotonic() < known.retry_at):
            return known
        if local is None and not self.network:
            return self._recalled(key)
        facts, unjudged, malformed, why = _read(variant, local, self.session)
        read = HeaderRead(facts, unjudged, version=version)
        if malformed:  # only a local or verified file condemns the variant: bytes over HTTP are the server's word
            read = HeaderRead(None, version=version, invalid=f"{redact(variant.source)} is not a GGUF model: {why}")
            log.warning("%s; variant %s is not used", read.invalid, variant.name)
        elif facts is None:
            attempts = known.attempts + 1 if known else 1
            delay = backoff_delay(attempts)
            later = unjudged and Blocked(unjudged.reason, f"{unjudged.message}; next try in {delay:.0f}s")
            read = HeaderRead(None, later, time.monotonic() + delay, attempts, version)
            log.info("%s: no GGUF header (%s); tried again in %.0fs", redact(variant.source), why, delay)
        with self._lock:
            self._reads[key] = read
        if self.record and local is None:
            self._remember(key, facts, unjudged)
        return read

    def forget_failures(self) -> None:
        with self._lock:
            self._reads = {key: read for key, read in self._reads.items() if read.facts is not None}

    def retry_in(self, variant: ModelVariant) -> float | None:
        with self._lock:
            known = self._reads.get((variant.source, variant.sha256))
        if known is None or known.retry_at is None:
            return None
        return max(0.0, known.retry_at - time.monotonic())

    def _path(self, key: tuple[str, str | None]) -> Path:
        # The name hides the source: a URL may carry a credential
        return self.directory / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()}.json"

    def _remember(self, key: tuple[str, str | None], facts: GgufFacts | None, unjudged: Blocked | None) -> None:
        seen = {"facts": facts and asdict(facts),
                "unjudged": unjudged and {"reason": unjudged.reason, "message": unjudged.message}}
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self._path(key), json.dumps(seen))
        except OSError as error:  # status then says less; the daemon goes on
            log.warning("cannot record a GGUF header under %s: %s", self.directory, error)

    def _recalled(self, key: tuple[str, str | None]) -> HeaderRead:
        try:
            seen = json.loads(self._path(key).read_text())
            facts = GgufFacts(**seen["facts"]) if seen["facts"] else None
            unjudged = Blocked(**seen["unjudged"]) if seen["unjudged"] else None
        except FileNotFoundError:
            return HeaderRead(None, Blocked("HeaderNotRead", "the daemon has not read its GGUF header yet "
                                                             "(status and describe make no requests of their own)"))
        except (OSError, ValueError, TypeError, KeyError):
            return HeaderRead(None)
        return HeaderRead(facts, unjudged)


def _version(local: Path | None) -> tuple[int, int] | None:
    try:
        found = local.stat() if local is not None else None
    except OSError:
        return None
    return (found.st_size, found.st_mtime_ns) if found else None


def _read(variant: ModelVariant, local: Path | None,
          session: Callable[[], requests.Session]) -> tuple[GgufFacts | None, Blocked | None, bool, str]:
    """The facts; else why the source could not be judged (None: it answered, with no GGUF header), whether the
    local file is malformed, and a line."""
    # Imported here: the parser brings gguf and numpy, which `status` and the other short commands never need.
    from reconciler.observe.gguf_header import fetch_gguf_facts, read_gguf_facts

    if local is not None:
        try:
            with open_regular(local) as file:
                opened = f"/proc/self/fd/{file.fileno()}"  # the file checked, not whatever the name holds later
                return read_gguf_facts(Path(opened)), None, False, ""
        except GgufUnreadable as error:
            return None, None, isinstance(error, GgufMalformed), error.reason.replace(opened, str(local))
        except OSError as error:
            return None, None, False, str(error)
    url = variant.source
    from reconciler.drive.watched_session import WatchedSession  # requests loads where a source is asked

    http = WatchedSession(session())
    try:
        return fetch_gguf_facts(url, session=http), None, False, ""
    except SourceRefused as refused:
        return None, Blocked("SourceRefused", f"{redact(url)}: {refused.why}"), False, "refused by the Policy"
    except GgufUnreadable:
        if http.failure is None:  # it answered: no bytes of the answer are repeated, it may be an internal service
            return None, None, False, "no GGUF header in what the source sent"
        detail = scrub(http.failure, url)
        return None, Blocked("SourceUnreachable", f"cannot read the GGUF header of {redact(url)}: {detail}"), False, detail
    finally:
        http.close()
