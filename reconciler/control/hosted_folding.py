"""The gateway's hosted-request lines folded into their workloads' evidence chains.

The gateway spools them (gateway/spool.py) because, running as a user of its own, it cannot append to a chain in
the desired state. Crash-only: a spool is renamed aside before it is folded and removed after, so lines the gateway
adds meanwhile go to a new spool; an aside spool found on the next fold was cut short, and its lines whose ids the
chain already holds are not added again. The gateway's user owns the folder, so each line is checked as it would
be from anyone: a regular file reached without links, bounded, only the fields a hosted request has.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler

from reconciler.base.atomic import UnsafeFile, open_regular, regular_size, remove_regular, rename_regular
from reconciler.gateway.spool import FOLDING_SUFFIX, SPOOL_SUFFIX, hosted_dir, spool_files
from reconciler.record.evidence import EVIDENCE_SUFFIX, HOSTED_REQUEST, chain_files, read_records
from reconciler.record.recorder import Recorder, sibling

log = logging.getLogger("reconciler")

MAX_SPOOL_BYTES = 4 * 1_048_576  # thousands of requests between two folds; more is not read (and said)
MAX_LINE_BYTES = 4096
LOCK_WAIT_SECONDS = 5.0  # an append takes microseconds: a lock held longer is the gateway's fault, not a reason to hang
HOSTED_FIELDS = frozenset({"id", "time", "event", "resource", "model", "provider", "region", "providerModel", "path",
                           "classes", "bytesOut", "bytesIn", "status", "outcome"})


class HostedFolding:
    def __init__(self, state_dir: Path, recorder: Recorder, spec_file_of: Callable[[str], str | None]) -> None:
        """`spec_file_of`: the file that declares a Workload that may be hosted (None: none such; its spool waits)."""
        self.directory = hosted_dir(state_dir)
        self._state_dir = state_dir
        self.recorder = recorder
        self._spec_file_of = spec_file_of
        self._lock = threading.Lock()  # the watch thread and each pass both fold

    def fold_all(self) -> None:
        names = {path.name.removesuffix(SPOOL_SUFFIX).removeprefix(".").removesuffix(FOLDING_SUFFIX)
                 for path in self.directory.glob("*")} if self.directory.is_dir() else set()
        for name in sorted(names):
            self.fold(name)

    def fold(self, workload: str) -> None:
        spec_file = self._spec_file_of(workload)
        if spec_file is None:
            return
        live, aside = spool_files(self._state_dir, workload)
        with self._lock:
            try:
                if regular_size(aside, root=self._state_dir) is not None:
                    self._fold_aside(workload, spec_file, aside, cut_short=True)
                if regular_size(live, root=self._state_dir) is not None:
                    rename_regular(live, aside, root=self._state_dir)
                    self._fold_aside(workload, spec_file, aside, cut_short=False)
            except (OSError, UnsafeFile) as problem:
                log.error("the hosted requests of Workload/%s are not in its evidence yet: %s", workload, problem)

    def _fold_aside(self, workload: str, spec_file: str, aside: Path, cut_short: bool) -> None:
        fd = open_regular(aside, os.O_RDONLY, root=self._state_dir)
        with os.fdopen(fd, "rb") as file:
            _lock_within(fd, LOCK_WAIT_SECONDS, aside)  # a line being appended as it was renamed is whole first
            held = file.read(MAX_SPOOL_BYTES + 1)
        if len(held) > MAX_SPOOL_BYTES:
            log.error("%s: over %d bytes; the lines past that are not in Workload/%s's evidence", aside,
                      MAX_SPOOL_BYTES, workload)
        done = self._ids_in_chain(spec_file) if cut_short else set()
        for raw in held[:MAX_SPOOL_BYTES].splitlines():
            line = hosted_line(raw, workload)
            if line is None:
                log.warning("%s: a line that is not a hosted request of Workload/%s is left out", aside, workload)
            elif line["id"] not in done:
                self.recorder.evidence(spec_file, line)
        remove_regular(aside, root=self._state_dir)

    def _ids_in_chain(self, spec_file: str) -> set[str]:
        records = read_records(chain_files(self.recorder.root / sibling(spec_file, EVIDENCE_SUFFIX)))
        return {record["id"] for record in records
                if record is not None and record.get("event") == HOSTED_REQUEST and isinstance(record.get("id"), str)}


def _lock_within(fd: int, seconds: float, path: Path) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(errno.EWOULDBLOCK, f"held locked over {seconds:g} s; folded later", str(path)) from None
            time.sleep(0.01)


def hosted_line(raw: bytes, workload: str) -> dict[str, Any] | None:
    """A spooled line as the chain takes it: a hosted request of `workload` with an id, and nothing else. Pure."""
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    if (not isinstance(line, dict) or line.get("event") != HOSTED_REQUEST or line.get("resource") != f"Workload/{workload}"
            or not isinstance(line.get("id"), str) or not 0 < len(line["id"]) <= 64):
        return None
    return {key: value for key, value in line.items() if key in HOSTED_FIELDS}


class SpoolEvents(FileSystemEventHandler):
    """The gateway appended to a spool (and closed it): its lines are folded now, not at the next resync."""

    EVENTS = [FileClosedEvent]  # one per append; the renames aside and the daemon's reads are not

    def __init__(self, folding: HostedFolding) -> None:
        self._folding = folding

    def on_any_event(self, event: FileSystemEvent) -> None:
        name = Path(str(event.src_path)).name
        if not event.is_directory and name.endswith(SPOOL_SUFFIX) and not name.startswith("."):
            self._folding.fold(name.removesuffix(SPOOL_SUFFIX))
