"""A work queue of resource keys with controller-runtime's guarantees.

A key is queued at most once; a key being processed is never handed to a second worker (an
add meanwhile marks it dirty and it is re-queued when done); delayed adds wait on the
monotonic clock, so wall-clock jumps neither stall nor rush a back-off.

Rate limiters (client-go's): a key whose reconcile failed is retried after a per-key exponential back-off, and,
as a safety net against any bug that re-adds a key at once forever (a due time computed in the past, an event
its own pass causes), each key may be handed out only as its token bucket allows. A failed key therefore waits
the longer of the two.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from typing import Generic, Hashable, TypeVar

Key = TypeVar("Key", bound=Hashable)
FAILURE_BACKOFF = (0.5, 60.0)  # a reconcile that raised is retried after: initial, most seconds


class ShutDown(Exception):
    pass


class TokenBuckets(Generic[Key]):
    """One token bucket per key: `burst` hand-outs at once, then `rate` a second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[Key, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: Key, now: float) -> float:
        """Take a token if there is one (returns 0), else seconds until there is (taking nothing)."""
        tokens, counted = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


class FailureBackoff(Generic[Key]):
    """Per key: `initial * 2^(failures-1)` seconds, capped at `most`, counted afresh once it succeeds."""

    def __init__(self, initial: float, most: float) -> None:
        self.initial, self.most = initial, most
        self._failures: dict[Key, int] = {}

    def failed(self, key: Key) -> tuple[int, float]:
        """Count a failure: (the how manyth in a row, seconds to wait before the next try)."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        return failures, min(self.most, self.initial * 2 ** min(failures - 1, 64))

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)


class WorkQueue(Generic[Key]):
    def __init__(self, pace: TokenBuckets[Key] | None = None) -> None:
        """`pace`: how often one key may be handed out (None: as often as it is added)."""
        self._pace = pace
        self._backoff: FailureBackoff[Key] = FailureBackoff(*FAILURE_BACKOFF)
        self._paced: set[Key] = set()  # keys waiting in `_delayed` for a token: further adds are already served
        self._ready: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._urgent: set[Key] = set()  # dirty keys to queue first when done
        self._delayed: list[tuple[float, int, Key]] = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._closed = False

    def add(self, key: Key, first: bool = False) -> None:
        """`first`: ahead of every key waiting (a process exit is not served after a resync's whole backlog)."""
        with self._condition:
            if self._closed:
                return
            self._enqueue(key, first)

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._condition:
            if self._closed:
                return
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._order), key))
            self._condition.notify()

    def add_failed(self, key: Key, most: float | None = None) -> tuple[int, float]:
        """Queue a key whose reconcile failed after its back-off (at most `most` seconds); returns (the how
        manyth failure in a row, the seconds it waits)."""
        with self._condition:
            failures, delay = self._backoff.failed(key)
        delay = delay if most is None else min(delay, most)
        self.add_after(key, delay)
        return failures, delay

    def forget(self, key: Key) -> None:
        """Its reconcile succeeded: a later failure backs off from the start again."""
        with self._condition:
            self._backoff.forget(key)

    def get(self) -> Key:
        """Block until a key is ready (and its token bucket allows); raises ShutDown once the queue is closed."""
        with self._condition:
            while True:
                if self._closed:
                    raise ShutDown
                self._promote_due()
                while self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    now = time.monotonic()
                    wait = self._pace.take(key, now) if self._pace is not None else 0.0
                    if wait > 0:
                        self._paced.add(key)
                        heapq.heappush(self._delayed, (now + wait, next(self._order), key))
                        continue
                    self._processing.add(key)
                    return key
                timeout = self._delayed[0][0] - time.monotonic() if self._delayed else None
                self._condition.wait(timeout)

    def done(self, key: Key) -> None:
        with self._condition:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._enqueue(key, key in self._urgent)
            self._urgent.discard(key)

    def shut_down(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def __len__(self) -> int:
        with self._condition:
            return len(self._ready) + len(self._delayed)

    def _promote_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._paced.discard(key)
            self._enqueue(key)

    def _enqueue(self, key: Key, first: bool = False) -> None:
        """Queue a key once; one being processed is only marked, to be queued again when done. Lock held."""
        if key in self._processing:
            self._dirty.add(key)
            if first:
                self._urgent.add(key)
        elif key in self._paced:
            return  # it waits for a token: when it has one, this add is served with it
        elif key not in self._queued:
            self._queued.add(key)
            if first:
                self._ready.appendleft(key)
            else:
                self._ready.append(key)
            self._condition.notify()
        elif first:
            self._ready.remove(key)
            self._ready.appendleft(key)
