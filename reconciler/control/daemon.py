"""The watch loop: file events, process exits and a periodic resync trigger passes; they never say what to do.

Editor saves are debounced: a file being written (opened, modified, not yet closed) is not read
until its writer closes it or renames it into place, so a half-written file is never applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from watchdog.events import (
    FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from reconciler.api.kinds import Workload
from reconciler.api.meta import ResourceKey
from reconciler.api.status import Listen
from reconciler.control import systemd
from reconciler.control.activation import on_demand_keys
from reconciler.control.asked_passes import STOPPING, AskedPasses
from reconciler.control.gitops import SYNC_REQUEST, GitFollower, Prepared
from reconciler.control.hosted_folding import HostedFolding, SpoolEvents
from reconciler.control.logfmt import about
from reconciler.control.loop import Loop
from reconciler.control.reconciler import DesiredStateUnreadable, Reconciler
from reconciler.load.desired import is_spec_file
from reconciler.observe.listening import SNAPSHOT_SECONDS

SPEC_CHANGE = "spec change"
ASKED = "apply"  # `reconciler apply` asked for a pass over the query socket
log = logging.getLogger("reconciler")

QUIET_SECONDS = 0.03  # after a save completes: lets a burst of saves coalesce into one pass
UNCLOSED_WRITE_SECONDS = 60.0  # a file modified but never closed (a stalled writer, a missed event) is read after this
MODEL_REHASH_SECONDS = 24 * 3600.0  # each cached model is hashed in full at least this often (and before each start)
ASKED_ROUNDS_STOP_SECONDS = 10.0  # for the rounds apply asked for that are under way to end before the loop stops
LISTEN_WATCH_SECONDS = SNAPSHOT_SECONDS  # a workload listening somewhere new gets a pass within this, not at the resync
# a second worker joins a pass only behind a reconcile that has run this long (it may be blocked): a resync of quick
# reconciles is one worker's, not two taking turns at the interpreter's lock (1,100 wake-ups a minute for 100 specs)
WORKER_JOIN_SECONDS = 0.02


class _SpecEvents(FileSystemEventHandler):
    """Tracks which spec files are mid-write and when the folder last settled."""

    # the kernel delivers only these: the opens and reads of every pass would wake the watcher's threads otherwise
    EVENTS = [FileModifiedEvent, FileCreatedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent]

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._writing: dict[str, float] = {}
        self._due: float | None = None
        self.changed_at = 0.0  # wall clock: the last change seen to a spec file

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [str(event.src_path)] + ([str(event.dest_path)] if isinstance(event, FileMovedEvent) else [])
        if event.is_directory or not any(is_spec_file(Path(path).name) for path in paths):
            return
        now = time.monotonic()
        with self._lock:
            if isinstance(event, FileModifiedEvent):
                self._writing[paths[0]] = now + UNCLOSED_WRITE_SECONDS
            elif isinstance(event, FileCreatedEvent):
                pass  # created files are written (modified) or moved in whole: the next event tells which
            elif isinstance(event, (FileClosedEvent, FileMovedEvent, FileDeletedEvent)):
                for path in paths:
                    self._writing.pop(path, None)
            else:
                return
            self._due, self.changed_at = now + QUIET_SECONDS, time.time()
        self._wake.set()

    def due_in(self) -> float | None:
        """Seconds until a pass is due (0: now), or None when nothing changed. Files mid-write do not delay it."""
        with self._lock:
            return None if self._due is None else max(0.0, self._due - time.monotonic())

    def consume(self, root: Path) -> frozenset[str]:
        """Mark the change as seen; returns the spec files (relative to root) still being written."""
        with self._lock:
            self._due = None
            now = time.monotonic()
            self._writing = {path: deadline for path, deadline in self._writing.items() if deadline > now}
            return frozenset(str(Path(path).relative_to(root)) for path in self._writing)


class _ApprovalEvents(FileSystemEventHandler):
    """A person answered (`reconciler approve/deny`): that workload is judged again at once."""

    EVENTS = [FileMovedEvent, FileClosedEvent, FileDeletedEvent]  # what changes an answer; each pass reads them all

    def __init__(self, answered: Callable[[str], None]) -> None:
        self._answered = answered

    def on_any_event(self, event: FileSystemEvent) -> None:
        # only what changes an answer: reading one (the daemon does, each pass) must not wake the daemon again
        if event.is_directory or not isinstance(event, tuple(self.EVENTS)):
            return
        path = Path(str(event.dest_path if isinstance(event, FileMovedEvent) else event.src_path))
        if path.suffix == ".json" and not path.name.startswith("."):
            self._answered(path.name.split(".", 1)[0])


class _SyncRequests(FileSystemEventHandler):
    """`reconciler sync` asked the follower to fetch now."""

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        if not event.is_directory and Path(str(path)).name == SYNC_REQUEST:
            self._wake.set()


class DemandEvents(FileSystemEventHandler):
    """The gateway wrote a demand record: every on-demand workload is passed (a start waiting for room needs a look
    when another's last request ends, not only the one whose record changed)."""

    EVENTS = [FileMovedEvent, FileClosedEvent]  # a record written (renamed into place); the daemon's reads are not

    def __init__(self, keys: Callable[[], list[ResourceKey]], add: Callable[[ResourceKey], None]) -> None:
        self._keys, self._add = keys, add

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or not isinstance(event, tuple(self.EVENTS)):
            return
        path = Path(str(event.dest_path if isinstance(event, FileMovedEvent) else event.src_path))
        if path.suffix == ".json" and not path.name.startswith("."):
            for key in self._keys():
                self._add(key)


class Daemon:
    def __init__(self, reconciler: Reconciler, resync_seconds: float = 30.0, workers: int = 2,
                 model_rehash_seconds: float = MODEL_REHASH_SECONDS, follower: GitFollower | None = None,
                 git_interval: float = 60.0) -> None:
        """`follower`: the desired state comes from a git branch, polled every `git_interval` seconds (and at
        once on `reconciler sync`); the folder is then never edited in place, so it is not watched."""
        self.reconciler = reconciler
        self.metrics = reconciler.metrics
        self.resync_seconds = resync_seconds
        self.model_rehash_seconds = model_rehash_seconds
        on_failure = self.metrics.failed if self.metrics else None
        self.loop: Loop[ResourceKey] = Loop(reconciler.reconcile, workers, on_failure, join_after=WORKER_JOIN_SECONDS)
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._events = _SpecEvents(self._wake)
        self._resync_requested = threading.Event()
        self._rehasher = threading.Thread(target=self._rehash_models, name="model-rehash", daemon=True)
        self._listen_watch = threading.Thread(target=self._watch_listening, name="listen-watch", daemon=True)
        self.follower, self.git_interval = follower, git_interval
        self._fetch_now = threading.Event()
        self._prepared: Prepared | None = None  # a revision the follower validated, for the loop to put in force
        self._switched = threading.Event()
        self.asked = AskedPasses(self._wake, self.stopping)

    @cached_property
    def hosted(self) -> HostedFolding:
        """The hosted-request lines the unprivileged gateway spools, folded into their workloads' chains (built on
        first use: the loop alone, as tests drive it, needs no collaborators)."""
        parts = self.reconciler.parts
        return HostedFolding(parts.state_dir, parts.recorder, self._hosted_spec_file)

    def _hosted_spec_file(self, workload: str) -> str | None:
        """Where a workload that may be hosted is declared: no other chain takes the gateway's lines."""
        entry = self.reconciler.desired.resources.get(ResourceKey("Workload", workload))
        hostable = entry is not None and isinstance(entry.resource, Workload) and entry.resource.spec.fallback is not None
        return entry.file if entry is not None and hostable else None

    def process_exited(self, name: str) -> None:
        key = ResourceKey("Workload", name)
        if self.metrics:
            self.metrics.triggered(key)
        self.loop.add(key, first=True)  # a restart is not kept waiting behind a pass's backlog

    def resync_now(self) -> None:
        """Something every resource may depend on came back (the container engine): a full pass, now."""
        self._resync_requested.set()
        self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    @property
    def spec_changed_at(self) -> float:
        return self._events.changed_at

    def run(self) -> None:
        observer = Observer()
        if self.follower is None:
            observer.schedule(self._events, str(self.reconciler.root), recursive=True, event_filter=_SpecEvents.EVENTS)
        else:
            observer.schedule(_SyncRequests(self._fetch_now), str(self.follower.home))
        approvals = self.reconciler.approvals.directory
        approvals.mkdir(parents=True, exist_ok=True, mode=0o700)
        observer.schedule(_ApprovalEvents(lambda name: self.loop.add(ResourceKey("Workload", name))), str(approvals),
                          event_filter=_ApprovalEvents.EVENTS)
        demand = self.reconciler.parts.activation.directory
        demand.mkdir(parents=True, exist_ok=True, mode=0o700)
        observer.schedule(DemandEvents(lambda: on_demand_keys(self.reconciler.desired), self.loop.add), str(demand),
                          event_filter=DemandEvents.EVENTS)
        self.hosted.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        observer.schedule(SpoolEvents(self.hosted), str(self.hosted.directory), event_filter=SpoolEvents.EVENTS)
        observer.start()
        self.reconciler.adopt()  # exits it notices are queued; the workers start once the first pass has loaded
        self._rehasher.start()
        self._listen_watch.start()
        if self.follower is not None:
            threading.Thread(target=self._follow, name="git-follower", daemon=True).start()
        log.info("watching %s (resync every %ss)", self.reconciler.root, self.resync_seconds)
        watchdog = systemd.Watchdog.from_environment()
        systemd.ready()  # after adopt(): what already runs is ours again
        next_resync = 0.0
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                watchdog.ping_if_due(now)
                due = self._events.due_in()
                if self._prepared is not None:
                    self._switch(self._prepared, watchdog)
                    next_resync = now + self.resync_seconds
                elif self.asked.waiting():
                    self._pass_asked()
                elif now >= next_resync or self._resync_requested.is_set():
                    self._resync_requested.clear()
                    self._pass("resync", self._events.consume(self.reconciler.root))
                    next_resync = now + self.resync_seconds
                elif due == 0:
                    self._pass(SPEC_CHANGE, self._events.consume(self.reconciler.root))
                now = time.monotonic()
                waits = (next_resync - now, self._events.due_in(), watchdog.due_in(now))
                self._wake.wait(min(wait for wait in waits if wait is not None))
                self._wake.clear()
        finally:
            self._switched.set()  # a follower waiting for its revision to be put in force must not hold the exit
            self.stopping.set()  # asked.ask() answers what comes after this itself
            self.asked.answer_all(STOPPING)
            self.asked.wait_for_rounds(ASKED_ROUNDS_STOP_SECONDS)
            systemd.stopping()
            watchdog.ping(time.monotonic())  # the joins below take up to a minute: begin them with a full interval
            observer.stop()
            self.loop.stop()
            observer.join(timeout=5)
            log.info("stopped; workloads keep running and are re-adopted on the next start")

    def _pass_asked(self) -> None:
        """Every pass asked for so far, as one: the snapshot is read now, after each was asked, whatever the file
        events' debounce says (a file written just before `apply` is in it; one mid-save is read as it is, as a
        one-shot apply reads it). The keys are not queued here: each asker runs them as its own round."""
        self._events.consume(self.reconciler.root)  # the changes seen so far are in this snapshot
        self.asked.answer_all(self._pass(ASKED, frozenset(), queue=False))

    def _pass(self, why: str, writing: frozenset[str], queue: bool = True) -> list[ResourceKey] | str:
        """Load the folder and list every key; `queue`: hand them to the workers. Returns the keys, or why no pass."""
        log.debug("pass: %s%s", why, f" (held while being written: {', '.join(sorted(writing))})" if writing else "")
        try:
            desired = self.reconciler.refresh(writing)
        except DesiredStateUnreadable as error:
            log.error("%s: %s; nothing changes until it is readable again", why, error)
            systemd.status(f"desired state unreadable: {error}")
            return str(error)
        except Exception:  # a loader bug must not take down what runs: keep serving the last snapshot
            log.exception("%s: loading the desired state failed; keeping the previous snapshot", why)
            return "loading the desired state failed; the daemon's log says why"
        for file, errors in desired.errors.items():
            for error in errors if file not in writing else ():  # a file mid-save is held, not wrong
                # apply prints them itself (cli/asked_apply.py): marked, not printed twice
                log.warning("%s", error, extra={"load_error": True, **(about(error.key)["extra"] if error.key else {})})
        self.hosted.fold_all()  # what a missed event or a fold cut short left
        try:
            keys = self.reconciler.keys()
        except Exception:  # noqa: BLE001 - a driver failing to list must not end the loop
            log.exception("%s: listing what to reconcile failed; the next pass tries again", why)
            return "listing what to reconcile failed; the daemon's log says why"
        if self.metrics:
            self.metrics.passes.labels(why).inc()
        if queue:
            if self.metrics and why == SPEC_CHANGE:
                for key in keys:
                    self.metrics.triggered(key)
            self.loop.add_all(keys)
        self.start_workers()
        systemd.status(f"{len(keys)} resources; last pass ({why}) at {time.strftime('%H:%M:%S')}")
        return keys

    def start_workers(self) -> None:
        """Called once a pass has loaded the desired state, and no sooner: a reconcile before it (an exit noticed
        while adopting) judged what runs against an empty desired state without engine facts, and wrote that
        false hold into the evidence."""
        self.loop.start()

    def _follow(self) -> None:
        """Fetching and validating a revision takes network and disk time: done here, off the loop, which puts
        a valid one in force between passes. One at a time: the follower is not safe to use from two threads."""
        follower = self.follower
        assert follower is not None
        while not self.stopping.is_set():
            attempted = follower.status.last_attempted_at
            try:
                follower.take_sync_request()
                prepared = follower.poll()
            except Exception:  # noqa: BLE001 - the last good revision stays in force whatever goes wrong here
                log.exception("following %s failed; the revision in force stays", follower.status.url)
                prepared = None
            status = follower.status
            if status.last_attempted_at != attempted and status.last_attempt_errors:
                log.error("revision %s is not applied (%s); %s stays in force: %s", status.last_attempted_revision,
                          status.last_attempt_outcome.value if status.last_attempt_outcome else "?",
                          status.last_applied_revision, "; ".join(status.last_attempt_errors))
            if prepared is not None:
                self._switched.clear()
                self._prepared = prepared
                self._wake.set()
                self._switched.wait()
            self._fetch_now.wait(self.git_interval)
            self._fetch_now.clear()

    def _switch(self, prepared: Prepared, watchdog: systemd.Watchdog) -> None:
        """Put a validated revision in force while no reconcile runs: each writes beside the specs, and what
        it wrote to the old tree after its outputs were carried over would be lost. The new snapshot is taken
        before they resume, so none reconciles the old one under the new revision's name."""
        assert self.follower is not None
        try:  # a slow stop in flight can take its whole grace period: keep the watchdog fed meanwhile
            with self.loop.paused(lambda: watchdog.ping_if_due(time.monotonic())):
                self.follower.switch(prepared)
                log.info("revision %s in force%s", prepared.revision,
                         f" (history rewritten: {prepared.rewritten_from} is no longer on the branch)"
                         if prepared.rewritten_from else "")
                self._pass("new revision", frozenset())
        except OSError:
            log.exception("putting %s in force failed; the revision before it stays", prepared.revision)
        finally:
            self._prepared = None
            self._switched.set()

    def _rehash_models(self) -> None:
        """Bytes changed in place keep size and mtime: only hashing finds them, so it runs on a schedule, off the
        loop (a large model takes minutes), and a discarded model is fetched again by the pass it triggers."""
        while not self.stopping.wait(min(self.model_rehash_seconds / 4, 3600.0)):
            try:
                if self.reconciler.models.rehash(self.model_rehash_seconds):
                    self.resync_now()
            except OSError:
                log.exception("re-hashing cached models failed; the next round tries again")

    def _watch_listening(self) -> None:
        """A workload whose sockets changed is passed at once: a listen the policy does not allow is judged (and in
        enforce mode stopped) within seconds. The watch only says when; the pass observes and decides again."""
        seen: dict[str, tuple[Listen, ...]] = {}
        version: object = None
        while not self.stopping.wait(LISTEN_WATCH_SECONDS):
            try:
                current = self.reconciler.workloads.listening_version()
                if current == version:
                    continue  # no socket opened or closed on the host, no workload started or ended: nothing changed
                now = self.reconciler.workloads.listening_now()
            except Exception:  # noqa: BLE001 - a failed look must not end the watch; the resync still passes all
                log.exception("reading what the workloads listen on failed; the next look tries again")
                continue
            version = current
            for name in sorted(name for name, listening in now.items() if seen.get(name) != listening):
                key = ResourceKey("Workload", name)
                if self.metrics:
                    self.metrics.triggered(key)
                self.loop.add(key)
            seen = now
