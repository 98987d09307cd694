"""The daemon's side of `apply` asked over the query socket: the pass runs in the daemon, with its loop's workers,
over a snapshot of the folder taken after the request arrived, and the client prints what the pass reports.

One asked round runs at a time (a loop runs one round at a time). Requests that waited while one ran are served by
the next, whose snapshot is taken after all of them arrived: they share its report (same options), and no key is
reconciled once per request."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.cli.common import EXIT_ERROR
from reconciler.cli.passes import applied

if TYPE_CHECKING:
    from reconciler.control.daemon import Daemon


@dataclass(frozen=True)
class _Report:
    asked_at: float  # monotonic: when its snapshot was asked for
    options: tuple[bool, float, float]  # wait, timeout, min-ready-seconds
    code: int
    lines: list[str]


class AskedApplies:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.allow_empty = daemon.reconciler.parts.holds.allow_empty  # whether it prunes for an empty desired state
        self._one_round = threading.Lock()
        self._last: _Report | None = None

    def apply(self, wait: bool, timeout: float, min_ready_seconds: float) -> tuple[int, list[str]]:
        """What `apply` exits with and prints on stderr, had it run here."""
        arrived, options = time.monotonic(), (wait, timeout, min_ready_seconds)
        with self._one_round:
            last = self._last
            if last is not None and last.asked_at > arrived and last.options == options:
                return last.code, last.lines  # its snapshot was asked for after this request arrived
            asked_at = time.monotonic()
            asked = self._daemon.pass_now()
            keys = asked.wait()
            if keys is None:
                self._last = None
                return EXIT_ERROR, [f"Error: {asked.why_not}"]
            daemon = self._daemon
            code, lines = applied(daemon.reconciler, daemon.loop, keys, wait, timeout, min_ready_seconds)
            self._last = _Report(asked_at, options, code, lines)
            return code, lines
