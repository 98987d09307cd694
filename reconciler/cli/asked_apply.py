"""The daemon's side of `apply` asked over the query socket: the pass runs in the daemon, with its loop's workers,
over a snapshot of the folder taken after the request arrived, and the client prints what the pass reports: the log
lines about its resources (as a one-shot apply logs them), then its load errors and failures.

One asked round runs at a time (a loop runs one round at a time). Requests that waited while one ran are served by
the next, whose snapshot is taken after all of them arrived: they share its report (same options), and no key is
reconciled once per request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.cli.common import EXIT_ERROR
from reconciler.cli.passes import applied
from reconciler.control.logfmt import formatted

log = logging.getLogger("reconciler")

if TYPE_CHECKING:
    from reconciler.control.daemon import Daemon


@dataclass(frozen=True)
class Options:
    wait: bool
    timeout: float
    min_ready_seconds: float
    log_level: str
    log_format: str


@dataclass(frozen=True)
class _Report:
    asked_at: float  # monotonic: when its snapshot was asked for
    options: Options
    code: int
    lines: list[str]  # load errors, failures, what it gave up waiting for


class AskedApplies:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.allow_empty = daemon.reconciler.parts.holds.allow_empty  # whether it prunes for an empty desired state
        self._one_round = threading.Lock()
        self._last: _Report | None = None

    def apply(self, options: Options) -> tuple[int, list[str]]:
        """What `apply` exits with and prints on stderr, had it run here: the log lines about resources from its
        arrival on (what the daemon's own pass over the same edit did meanwhile too), then its round's report."""
        arrived = time.monotonic()
        log.debug("apply asked for a pass")
        with _logged_about_resources(options) as logged, self._one_round:
            last = self._last
            if last is None or last.asked_at <= arrived or last.options != options:
                last = self._last = self._round(options)
        return last.code, [*logged, *last.lines]

    def _round(self, options: Options) -> _Report:
        """A snapshot asked for now, its keys run as one round."""
        asked_at, daemon = time.monotonic(), self._daemon
        asked = daemon.pass_now()
        keys = asked.wait()
        if keys is None:
            return _Report(asked_at, options, EXIT_ERROR, [f"Error: {asked.why_not}"])
        code, lines = applied(daemon.reconciler, daemon.loop, keys, options.wait, options.timeout,
                              options.min_ready_seconds)
        return _Report(asked_at, options, code, lines)


@contextmanager
def _logged_about_resources(options: Options) -> Iterator[list[str]]:
    """The daemon's log lines about its resources while inside, at the client's level and in its format."""
    lines: list[str] = []

    class Collected(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "resource", None) is not None:
                lines.append(self.format(record))

    handler = formatted(Collected(options.log_level), options.log_format)
    logger = logging.getLogger("reconciler")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
