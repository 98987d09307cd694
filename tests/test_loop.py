"""The loop driver the daemon and `apply` share, driven by stand-in reconcile functions on real threads.

Every wait is bounded; what must not happen is watched for a short, fixed time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from reconciler.control.loop import Loop
from reconciler.control.result import Result

PATIENCE = 5.0  # upper bound for something that must happen


class Recorder:
    """A stand-in reconcile: logs (key, begin/end) and does what `behaviour` says for each key."""

    def __init__(self, behaviour: Callable[[str, int], Result] = lambda key, n: Result.until_event(),
                 seconds: float = 0.0) -> None:
        self.behaviour, self.seconds = behaviour, seconds
        self.events: list[tuple[str, str, float]] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.concurrent: dict[str, int] = {}
        self.most_concurrent: dict[str, int] = {}

    def __call__(self, key: str) -> Result:
        with self._lock:
            n = self.counts[key] = self.counts.get(key, 0) + 1
            self.concurrent[key] = self.concurrent.get(key, 0) + 1
            self.most_concurrent[key] = max(self.most_concurrent.get(key, 0), self.concurrent[key])
            self.events.append((key, "begin", time.monotonic()))
        try:
            time.sleep(self.seconds)
            return self.behaviour(key, n)
        finally:
            with self._lock:
                self.concurrent[key] -= 1
                self.events.append((key, "end", time.monotonic()))

    def times(self, key: str, what: str = "begin") -> list[float]:
        with self._lock:
            return [at for name, event, at in self.events if name == key and event == what]


@pytest.fixture
def running() -> Iterator[Callable[[Recorder, int], Loop[str]]]:
    loops: list[Loop[str]] = []

    def start(reconcile: Recorder, workers: int = 4) -> Loop[str]:
        loop: Loop[str] = Loop(reconcile, workers)
        loop.start()
        loops.append(loop)
        return loop

    yield start
    for loop in loops:
        loop.stop()


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_one_key_is_never_reconciled_twice_at_once(running: Callable[[Recorder, int], Loop[str]]) -> None:
    slow = Recorder(seconds=0.05)
    loop = running(slow, 4)
    for _ in range(20):  # adds while it runs mark it dirty: one more pass, never a second worker
        loop.add("a")
        loop.add("b")
        time.sleep(0.005)
    wait_for(lambda: len(slow.times("a", "end")) >= 2 and len(slow.times("b", "end")) >= 2, "the passes")
    assert slow.most_concurrent == {"a": 1, "b": 1}


def test_a_round_reconciles_each_key_after_the_keys_it_waits_for(running: Callable[[Recorder, int], Loop[str]]) -> None:
    reconcile = Recorder(seconds=0.05)
    loop = running(reconcile, 4)
    assert loop.run_round(["serves-m", "m", "policy", "alone"], {"serves-m": {"m", "policy"}}, timeout=PATIENCE)
    assert reconcile.times("serves-m")[0] >= max(reconcile.times("m", "end")[0], reconcile.times("policy", "end")[0])
    assert reconcile.times("alone")[0] < reconcile.times("m", "end")[0], "what waits for nothing is not held back"
    assert reconcile.counts == {"serves-m": 1, "m": 1, "policy": 1, "alone": 1}


def test_a_round_ends_only_when_every_key_has_finished(running: Callable[[Recorder, int], Loop[str]]) -> None:
    reconcile = Recorder(seconds=0.2)
    loop = running(reconcile, 2)
    assert not loop.run_round(["a", "b", "c"], timeout=0.1)
    assert loop.run_round(["a", "b", "c"], timeout=PATIENCE)
    assert all(reconcile.times(key, "end") for key in "abc")


def test_requeue_after_brings_the_key_back_after_that_long(running: Callable[[Recorder, int], Loop[str]]) -> None:
    reconcile = Recorder(lambda key, n: Result.after(0.3) if n == 1 else Result.until_event())
    loop = running(reconcile, 2)
    loop.add("a")
    wait_for(lambda: len(reconcile.times("a")) == 2, "the requeued pass")
    first, second = reconcile.times("a")
    assert second - first >= 0.3
    time.sleep(0.5)
    assert reconcile.counts["a"] == 2, "until_event: not again until something adds it"


def test_a_failing_reconcile_is_retried_with_back_off_and_forgiven_once_it_succeeds(
        running: Callable[[Recorder, int], Loop[str]]) -> None:
    def fail_twice(key: str, n: int) -> Result:
        if n <= 2:
            raise RuntimeError(f"failure {n}")
        return Result.until_event()

    reconcile = Recorder(fail_twice)
    loop = running(reconcile, 2)
    loop.add("a")
    wait_for(lambda: len(reconcile.times("a")) == 1 and "a" in loop.failures, "the first failure")
    assert str(loop.failures["a"]) == "failure 1"
    wait_for(lambda: len(reconcile.times("a", "end")) == 3, "the retries")
    first, second, third = reconcile.times("a")
    assert second - first >= 0.5 and third - second >= 1.0, "exponential back-off: 0.5 s, then 1 s"
    wait_for(lambda: "a" not in loop.failures, "the success to clear the failure")


def test_a_failed_key_counts_as_done_in_its_round(running: Callable[[Recorder, int], Loop[str]]) -> None:
    def broken(key: str, n: int) -> Result:
        if key == "m":
            raise OSError("disk")
        return Result.until_event()

    reconcile = Recorder(broken)
    loop = running(reconcile, 2)
    assert loop.run_round(["m", "w"], {"w": {"m"}}, timeout=PATIENCE)
    assert reconcile.counts == {"m": 1, "w": 1} and set(loop.failures) == {"m"}


def test_nothing_runs_while_paused_and_the_pause_waits_for_what_is_in_flight(
        running: Callable[[Recorder, int], Loop[str]]) -> None:
    reconcile = Recorder(seconds=0.3)
    loop = running(reconcile, 2)
    loop.add("a")
    wait_for(lambda: bool(reconcile.times("a")), "the first pass to begin")
    with loop.paused():
        assert reconcile.times("a", "end"), "the pass in flight ended before the pause began"
        loop.add("b")
        time.sleep(0.3)
        assert not reconcile.times("b"), "no reconcile begins while paused"
    wait_for(lambda: bool(reconcile.times("b", "end")), "the pass held back by the pause")


def test_stop_ends_the_workers_and_later_adds_do_nothing() -> None:
    reconcile = Recorder()
    loop: Loop[str] = Loop(reconcile, 2)
    loop.start()
    loop.stop()
    loop.add("a")
    time.sleep(0.2)
    assert reconcile.counts == {}


class Overlaps:
    """A stand-in reconcile that counts how many run at once; the key "stuck" blocks until `release` is set."""

    def __init__(self) -> None:
        self.running = self.most = 0
        self.done: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> Result:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if key == "stuck":
                self.release.wait(PATIENCE)
            else:
                time.sleep(0.001)  # a quick reconcile's syscalls
            return Result.until_event()
        finally:
            with self._lock:
                self.running -= 1
                self.done.append(key)


def test_a_backlog_of_quick_reconciles_is_one_workers_not_all_taking_turns() -> None:
    """Two workers on one pass of quick reconciles only took turns at the interpreter's lock, each turn a wake-up
    (1,100 a minute for an idle daemon's 100 workloads): a second worker joins only behind a reconcile that has run
    `join_after`."""
    reconcile = Overlaps()
    loop: Loop[str] = Loop(reconcile, 4, join_after=PATIENCE)
    loop.start()
    try:
        keys = [f"w{n}" for n in range(100)]
        assert loop.run_round(keys, timeout=PATIENCE)
        assert sorted(reconcile.done) == sorted(keys)
        assert reconcile.most == 1
    finally:
        loop.stop()


def test_a_worker_blocked_in_a_slow_reconcile_gets_help_after_join_after() -> None:
    reconcile = Overlaps()
    loop: Loop[str] = Loop(reconcile, 2, join_after=0.05)
    loop.start()
    try:
        loop.add("stuck")
        wait_for(lambda: reconcile.running == 1, "the stuck reconcile to begin")
        for key in ("a", "b"):
            loop.add(key)
        wait_for(lambda: {"a", "b"} <= set(reconcile.done), "the keys behind the stuck one, by the other worker")
        assert "stuck" not in reconcile.done
    finally:
        reconcile.release.set()
        loop.stop()
