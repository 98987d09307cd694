"""The loop driver: the one place where work is queued, reconciled, retried and finished.

Workers take keys from one rate-limited work queue and hand each to a reconcile function; what it returns
(`Result`) says when the key is due again, and a reconcile that raised is retried after the queue's per-key
back-off. The daemon runs the loop for as long as it runs; `apply` runs it for one round over every key (and,
with --wait, until every workload is settled), so both retry, pace and serialise a key the same way.

A round hands out its keys in the order the plan's edges give (`prerequisites`): a key is queued once every key
it waits for has finished its first reconcile of the round, so a Workload starts on the Model fetched before it.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Generic, Hashable, TypeVar

from reconciler.control.logfmt import about
from reconciler.control.result import Result
from reconciler.control.workqueue import ShutDown, TokenBuckets, WorkQueue

Key = TypeVar("Key", bound=Hashable)
log = logging.getLogger("reconciler")

PASSES_PER_SECOND, PASS_BURST = 5.0, 10  # the most one key is reconciled, whatever asks for it (a safety net)
STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})  # its records cannot be written
STORAGE_RETRY_SECONDS = 5.0  # room returns without an event to wake the loop: look again this often


class Loop(Generic[Key]):
    """Workers over one paced work queue: `add` asks for a key, `run_round` reconciles a set once in order,
    `paused` holds every worker, `stop` ends them."""

    def __init__(self, reconcile: Callable[[Key], Result], workers: int,
                 on_failure: Callable[[Key], None] | None = None, join_after: float = 0.0) -> None:
        """`reconcile`: converges one key, returns when it wants another look, raises when it failed.
        `on_failure`: told of each failed reconcile (the metrics count them). `join_after`: the work queue's (a
        sleeping worker joins a backlog once every reconcile in flight has run this long; 0: at once)."""
        self.reconcile = reconcile
        self.queue: WorkQueue[Key] = WorkQueue(TokenBuckets(PASSES_PER_SECOND, PASS_BURST), join_after)
        self.failures: dict[Key, BaseException] = {}  # keys whose last reconcile raised, and what
        self._on_failure = on_failure
        self._workers = [threading.Thread(target=self._work, name=f"worker-{n}", daemon=True) for n in range(workers)]
        self._progress = threading.Condition()  # a reconcile finished; a pause may begin
        self._finished = 0
        self._paused, self._in_flight = False, 0
        self._round: set[Key] = set()  # keys of the round in progress not yet reconciled once
        self._waiting: dict[Key, set[Key]] = {}  # keys of the round held back -> the keys they still wait for

    def add(self, key: Key, first: bool = False) -> None:
        """`first`: ahead of every key waiting (a process exit is not served after a resync's whole backlog)."""
        self.queue.add(key, first)

    def add_all(self, keys: Iterable[Key]) -> None:
        """A pass's keys, queued as one: a worker woken by the first does not wait on the lock for each next."""
        self.queue.add_all(keys)

    def start(self) -> None:
        """Start the workers (once: later calls do nothing)."""
        for worker in self._workers:
            if worker.ident is None:
                worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """No key is handed out any more; a reconcile in flight is waited for (up to `timeout` seconds each)."""
        self.queue.shut_down()
        for worker in self._workers:
            if worker.ident is not None:
                worker.join(timeout=timeout)

    def run_round(self, keys: Iterable[Key], prerequisites: Mapping[Key, Iterable[Key]] | None = None,
                  timeout: float | None = None) -> bool:
        """Reconcile every key at least once, each after the keys it waits for; returns whether all were done
        within `timeout` seconds. A failed reconcile counts as done (its retry follows its back-off)."""
        keys = list(keys)
        waits = {key: set(prerequisites.get(key, ())) & set(keys) - {key} for key in keys} if prerequisites else {}
        with self._progress:
            self._round = set(keys)
            self._waiting = {key: wanted for key, wanted in waits.items() if wanted}
        for key in keys:
            if key not in self._waiting:
                self.add(key)
        with self._progress:
            done = self._progress.wait_for(lambda: not self._round, timeout)
            self._round, self._waiting = set(), {}
            return done

    @property
    def finished(self) -> int:
        """How many reconciles have finished so far: a mark for `wait_for_progress`."""
        with self._progress:
            return self._finished

    def wait_for_progress(self, since: int, timeout: float) -> None:
        """Until a reconcile finishes after mark `since` (at once if one has), or `timeout` seconds."""
        with self._progress:
            self._progress.wait_for(lambda: self._finished != since, timeout)

    @contextmanager
    def paused(self, while_waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
        """No reconcile runs inside: the ones in flight are waited for (calling `while_waiting` every few
        seconds meanwhile) and new ones wait until it ends."""
        with self._progress:
            self._paused = True
            while self._in_flight:
                self._progress.wait(timeout=5.0)
                while_waiting()
        try:
            yield
        finally:
            with self._progress:
                self._paused = False
                self._progress.notify_all()

    def _work(self) -> None:
        while True:
            try:
                key = self.queue.get()
            except ShutDown:
                return
            with self._progress:
                self._progress.wait_for(lambda: not self._paused)
                self._in_flight += 1
                in_round = key in self._round and key not in self._waiting  # not one begun before the round
            try:
                self._reconcile(key)
            finally:
                with self._progress:
                    self._in_flight -= 1
                    self._finished += 1
                    released = self._finish_in_round(key) if in_round else []
                    self._progress.notify_all()
                self.queue.done(key)
                for waiting in released:
                    self.add(waiting)

    def _reconcile(self, key: Key) -> None:
        try:
            result = self.reconcile(key)
        except Exception as error:
            self.failures[key] = error
            if self._on_failure is not None:
                self._on_failure(key)
            if isinstance(error, OSError) and error.errno in STORAGE_ERRORS:
                # nothing is acted on before its decision is written: it waits, as it ran, for room
                _, delay = self.queue.add_failed(key, most=STORAGE_RETRY_SECONDS)
                log.error("%s: cannot write its records (%s); nothing is changed for it until they can be written; "
                          "retrying in %.1fs", key, error, delay, **about(key))
            else:
                failures, delay = self.queue.add_failed(key)
                log.exception("%s: reconcile failed (attempt %d); retrying in %.1fs", key, failures, delay, **about(key))
            return
        self.failures.pop(key, None)
        self.queue.forget(key)
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)

    def _finish_in_round(self, key: Key) -> list[Key]:
        """Mark `key` done in the round; returns the keys that waited for it and wait for nothing more. Lock held."""
        self._round.discard(key)
        released = []
        for waiting, wanted in list(self._waiting.items()):
            wanted.discard(key)
            if not wanted:
                del self._waiting[waiting]
                released.append(waiting)
        return released
