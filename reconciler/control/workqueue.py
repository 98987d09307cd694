"""A work queue of resource keys with controller-runtime's guarantees.

A key is queued at most once; a key being processed is never handed to a second worker (an
add meanwhile marks it dirty and it is re-queued when done); delayed adds wait on the
monotonic clock, so wall-clock jumps neither stall nor rush a back-off.

Rate limiters (client-go's): a key whose reconcile failed is retried after a per-key exponential back-off, and,
as a safety net against any bug that re-adds a key at once forever (a due time computed in the past, an event
its own pass causes), each key may be handed out only as its token bucket allows. A failed key therefore waits
the longer of the two.

Wake-ups: a sleeping worker is woken only for what needs it. One sleeper keeps the time (the next delayed key or
backlog duty), the others sleep until notified. With `join_after`, a second worker takes a key only once every key
in hand has run that long: a pass of quick reconciles is served by one worker instead of several taking turns at the
interpreter's lock (a dozen wake-ups per key), and a worker blocked in a slow reconcile (a stop's grace period, an
engine call) still gets help within that time.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable
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
    def __init__(self, pace: TokenBuckets[Key] | None = None, join_after: float = 0.0) -> None:
        """`pace`: how often one key may be handed out (None: as often as it is added). `join_after`: seconds every
        key in hand must have run before a sleeping worker is woken for a waiting one (0: at once)."""
        self._pace, self._join_after = pace, join_after
        self._backoff: FailureBackoff[Key] = FailureBackoff(*FAILURE_BACKOFF)
        self._paced: set[Key] = set()  # keys waiting in `_delayed` for a token: further adds are already served
        self._ready: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._processing: dict[Key, float] = {}  # key -> when it was handed out
        self._dirty: set[Key] = set()
        self._urgent: set[Key] = set()  # dirty keys to queue first when done
        self._delayed: list[tuple[float, int, Key]] = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self._sleepers = 0  # getters waiting on the condition
        self._alarm: float | None = None  # when the sleeper keeping the time wakes (None: none keeps it)

    def add(self, key: Key, first: bool = False) -> None:
        """`first`: ahead of every key waiting (a process exit is not served after a resync's whole backlog)."""
        with self._condition:
            if self._closed:
                return
            self._enqueue(key, first)

    def add_all(self, keys: Iterable[Key]) -> None:
        """Queue each (as `add`) under one hold of the lock, waking at most one sleeper: the one woken wakes the next
        if another is wanted, and the adding thread does not contend with it for the lock on every key."""
        with self._condition:
            if self._closed:
                return
            for key in keys:
                self._enqueue(key, rouse=False)
            self._rouse()

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._condition:
            if self._closed:
                return
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._order), key))
            self._rouse()

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
                now = time.monotonic()
                if self._ready and self._may_take(now):
                    key = self._take(now)
                    if key is not None:
                        self._rouse()  # the time it kept (if it did) is someone else's to keep now
                        return key
                self._sleep(now)

    def done(self, key: Key) -> None:
        """A backlog behind it wakes no sleeper: the caller, back in `get`, takes it (or the sleeper keeping the
        time for it does, at most `join_after` after the youngest key in hand was handed out)."""
        with self._condition:
            self._processing.pop(key, None)
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

    def _take(self, now: float) -> Key | None:
        """The first ready key its token bucket allows (the others wait in `_delayed` for a token). Lock held."""
        while self._ready:
            key = self._ready.popleft()
            self._queued.discard(key)
            wait = self._pace.take(key, now) if self._pace is not None else 0.0
            if wait > 0:
                self._paced.add(key)
                heapq.heappush(self._delayed, (now + wait, next(self._order), key))
                continue
            self._processing[key] = now
            return key
        return None

    def _may_take(self, now: float) -> bool:
        """Whether another worker is wanted for a ready key: none is in hand, or every one has run `join_after` (its
        worker may be blocked). A worker back from a key that finds another's young waits too: two running at once
        only take turns at the interpreter's lock, each turn a wake-up. Lock held."""
        return not self._processing or now >= max(self._processing.values()) + self._join_after

    def _next_duty(self) -> float | None:
        """When a sleeper must next act, if ever: a delayed key comes due, or a backlog may be joined. Lock held."""
        duties = [self._delayed[0][0]] if self._delayed else []
        if self._ready:
            duties.append(max(self._processing.values()) + self._join_after if self._processing else 0.0)
        return min(duties, default=None)

    def _sleep(self, now: float) -> None:
        """Wait for a notify, keeping the time if no sleeper keeps it as early as it must be kept. Lock held."""
        duty = self._next_duty()
        keeps = duty is not None and (self._alarm is None or duty < self._alarm)
        if keeps:
            self._alarm = duty
        self._sleepers += 1
        try:
            self._condition.wait(max(0.0, duty - now) if keeps and duty is not None else None)
        finally:
            self._sleepers -= 1
            if keeps and self._alarm == duty:
                self._alarm = None

    def _rouse(self) -> None:
        """Wake one sleeper if a ready key wants one now, or if no sleeper keeps the time as early as the next duty
        needs. Lock held."""
        if not self._sleepers:
            return
        if self._ready and self._may_take(time.monotonic()):
            self._condition.notify()
            return
        duty = self._next_duty()
        if duty is not None and (self._alarm is None or duty < self._alarm):
            self._condition.notify()

    def _promote_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._paced.discard(key)
            self._enqueue(key, rouse=False)

    def _enqueue(self, key: Key, first: bool = False, rouse: bool = True) -> None:
        """Queue a key once; one being processed is only marked, to be queued again when done. Lock held.
        `rouse`: wake a sleeper for it if one is wanted (not when the caller is a getter, which takes it itself)."""
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
            if rouse:
                self._rouse()
        elif first:
            self._ready.remove(key)
            self._ready.appendleft(key)
