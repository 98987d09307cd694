"""A work queue of resource keys with controller-runtime's guarantees.

A key is queued at most once; a key being processed is never handed to a second worker (an
add meanwhile marks it dirty and it is re-queued when done); delayed adds wait on the
monotonic clock, so wall-clock jumps neither stall nor rush a back-off.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from typing import Generic, Hashable, TypeVar

Key = TypeVar("Key", bound=Hashable)


class ShutDown(Exception):
    pass


class WorkQueue(Generic[Key]):
    def __init__(self) -> None:
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

    def get(self) -> Key:
        """Block until a key is ready; raises ShutDown once the queue is closed."""
        with self._condition:
            while True:
                if self._closed:
                    raise ShutDown
                self._promote_due()
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
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
            self._enqueue(key)

    def _enqueue(self, key: Key, first: bool = False) -> None:
        """Queue a key once; one being processed is only marked, to be queued again when done. Lock held."""
        if key in self._processing:
            self._dirty.add(key)
            if first:
                self._urgent.add(key)
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
