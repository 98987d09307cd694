"""Passes `apply` asks the daemon for (cli/asked_apply.py), from the query server's threads: the loop's thread takes
them in arrival order, loads the folder once for all of them and answers each with the keys to run as its round."""

from __future__ import annotations

import threading

from reconciler.api.meta import ResourceKey

STOPPING = "the daemon is stopping"


class AskedPass:
    """One pass `apply` asked for: the keys of the snapshot the loop's thread took for it, or why there are none."""

    def __init__(self) -> None:
        self._answered = threading.Event()
        self._keys: list[ResourceKey] | str = ""

    def answer(self, keys: list[ResourceKey] | str) -> None:
        self._keys = keys
        self._answered.set()

    def wait(self) -> list[ResourceKey] | str:
        self._answered.wait()
        return self._keys


class AskedPasses:
    def __init__(self, wake: threading.Event, stopping: threading.Event) -> None:
        self._wake, self._stopping = wake, stopping
        self._asked: list[AskedPass] = []
        self._lock = threading.Lock()
        self._rounds = threading.Condition(self._lock)
        self._under_way = 0  # rounds asked for and not yet run: they need the loop's workers

    def ask(self) -> AskedPass:
        """A pass over a snapshot of the folder taken after this call; answered at once once the daemon stops (its
        loop sets `stopping` before it answers the last ones, so none is left unanswered)."""
        asked = AskedPass()
        with self._lock:
            if self._stopping.is_set():
                asked.answer(STOPPING)
            else:
                self._asked.append(asked)
                self._under_way += 1
        self._wake.set()
        return asked

    def waiting(self) -> bool:
        return bool(self._asked)

    def answer_all(self, keys: list[ResourceKey] | str) -> None:
        """Every pass asked so far: `keys`, or why there are none."""
        with self._lock:
            asked, self._asked = self._asked, []
            if isinstance(keys, str):  # no round follows
                self._under_way -= len(asked)
                self._rounds.notify_all()
        for one in asked:
            one.answer(keys)

    def round_run(self) -> None:
        """The asker of a pass answered with keys ran them as its round."""
        with self._rounds:
            self._under_way -= 1
            self._rounds.notify_all()

    def wait_for_rounds(self, timeout: float) -> None:
        """Until every round under way has run (for `timeout` seconds at most): the daemon stops its loop after."""
        with self._rounds:
            self._rounds.wait_for(lambda: self._under_way == 0, timeout)
