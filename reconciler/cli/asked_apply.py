"""The daemon's side of `apply` asked over the query socket: the pass runs in the daemon, with its loop's workers,
over a snapshot of the folder taken after the request arrived, and the client prints what the pass reports: the log
lines about its resources (as a one-shot apply logs them), then its load errors and failures.

One asked round runs at a time (a loop runs one round at a time). Requests that waited while one ran are served by
the next, whose snapshot is taken after all of them arrived: no key is reconciled once per request. A --wait waits
after the round without holding the next one back, and ends when its client has gone.

The daemon's own watch acts on an edit 30 ms after it, often before the apply that follows the edit arrives: what
apply prints must not depend on which of the two acted. It prints the lines about resources logged since the last
change to a spec file, or since the last asked apply ended if that came later, until its report is made."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.cli.common import EXIT_ERROR
from reconciler.cli.passes import Waiting, settled
from reconciler.control.logfmt import formatted

log = logging.getLogger("reconciler")

if TYPE_CHECKING:
    from reconciler.api.meta import ResourceKey
    from reconciler.control.daemon import Daemon

RECENT_LINES = 2000  # lines about resources kept for the next apply: a crash-looping workload's cannot fill memory


@dataclass(frozen=True)
class Options:
    wait: bool
    timeout: float
    min_ready_seconds: float
    log_level: str
    log_format: str


@dataclass(frozen=True)
class _Round:
    asked_at: float  # monotonic: when its snapshot was asked for
    keys: list[ResourceKey] | None
    why_not: str  # when there are no keys


class AskedApplies:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.allow_empty = daemon.reconciler.parts.holds.allow_empty  # whether it prunes for an empty desired state
        self._one_round = threading.Lock()
        self._last: _Round | None = None
        self._recent = _RecentLines()
        log.addHandler(self._recent)
        self._reported_until = 0.0  # wall clock: when the last asked apply's report was made

    def apply(self, options: Options, gone: threading.Event) -> tuple[int, list[str]]:
        """What `apply` exits with and prints on stderr, had it run here. `gone`: its client left (the wait ends)."""
        arrived = time.monotonic()
        since = min(time.time(), max(self._reported_until, self._daemon.spec_changed_at))
        log.debug("apply asked for a pass")
        with self._recent.down_to(options.log_level):
            with self._one_round:
                last = self._last
                if last is None or last.asked_at <= arrived:
                    last = self._last = self._round()
            if last.keys is None:
                code, lines = EXIT_ERROR, [f"Error: {last.why_not}"]
            else:
                code, lines = settled(self._daemon.reconciler, self._daemon.loop, last.keys,
                                      Waiting(options.wait, options.timeout, options.min_ready_seconds,
                                              arrived + options.timeout, self._one_round, lambda: self._ended(gone)))
            until = time.time()
        self._reported_until = max(self._reported_until, until)
        return code, [*self._recent.since(since, until, options), *lines]

    def _ended(self, gone: threading.Event) -> str | None:
        """Why a --wait ends before what it waits for (None: it goes on)."""
        if gone.is_set():
            return "stopped waiting: nobody reads this any more"
        return "stopped waiting: the daemon is stopping" if self._daemon.stopping.is_set() else None

    def _round(self) -> _Round:
        """A snapshot asked for now, its keys run as one round. Round lock held."""
        asked_at, daemon = time.monotonic(), self._daemon
        keys = daemon.asked.ask().wait()
        if isinstance(keys, str):
            return _Round(asked_at, None, keys)
        try:
            daemon.loop.run_round(keys, daemon.reconciler.prerequisites(keys))
        finally:
            daemon.asked.round_run()
        return _Round(asked_at, keys, "")


class _RecentLines(logging.Handler):
    """The daemon's last log records about resources (load errors aside: apply reports those itself)."""

    def __init__(self) -> None:
        super().__init__()
        self._records: deque[logging.LogRecord] = deque(maxlen=RECENT_LINES)
        self._levels: list[int] = []  # of the clients collecting now
        self._levels_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "resource", None) is not None and not getattr(record, "load_error", False):
            self._records.append(record)

    @contextmanager
    def down_to(self, level: str) -> Iterator[None]:
        """While inside, the daemon logs down to `level` too (its own handlers keep its level): a client's DEBUG
        lines are made even when the daemon's are not."""
        number = logging.getLevelName(level)
        with self._levels_lock:
            self._levels.append(number)
            self._set_level()
        try:
            yield
        finally:
            with self._levels_lock:
                self._levels.remove(number)
                self._set_level()

    def _set_level(self) -> None:
        lowest = min(self._levels, default=logging.NOTSET)
        log.setLevel(lowest if lowest < logging.getLogger().getEffectiveLevel() else logging.NOTSET)

    def since(self, since: float, until: float, options: Options) -> list[str]:
        """The lines logged between `since` and `until` (wall clock) at the client's level, in its format."""
        shown = formatted(logging.Handler(options.log_level), options.log_format)
        return [shown.format(record) for record in self._records.copy()
                if since <= record.created <= until and record.levelno >= shown.level and shown.filter(record)]
