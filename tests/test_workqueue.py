"""The work queue: dedupe, one worker per key, delayed adds in due order, shut down, its rate limiters.

Real threads and short real waits only; every wait is on a condition with a timeout.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.control.workqueue import FailureBackoff, ShutDown, TokenBuckets, WorkQueue

SETTLE = 0.1  # how long "nothing happens" is watched for
PATIENCE = 2.0  # upper bound for something that must happen


class Getter:
    """One `queue.get()` in a background thread."""

    def __init__(self, queue: WorkQueue[str]) -> None:
        self.queue = queue
        self.key: str | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()
        started = threading.Event()
        self.native_id = 0
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(PATIENCE)

    def _run(self, started: threading.Event) -> None:
        self.native_id = threading.get_native_id()
        started.set()
        try:
            self.key = self.queue.get()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.error = error
        finally:
            self.finished.set()

    def got(self, timeout: float = PATIENCE) -> str | None:
        return self.key if self.finished.wait(timeout) else None


@pytest.fixture
def queue() -> Iterator[WorkQueue[str]]:
    work: WorkQueue[str] = WorkQueue()
    yield work
    work.shut_down()  # releases any getter still waiting


def wait_until(deadline: float) -> None:
    """Let the monotonic clock pass `deadline` (a few milliseconds at most in these tests)."""
    while time.monotonic() < deadline:
        time.sleep(0.002)


def test_a_key_added_twice_is_queued_once(queue: WorkQueue[str]) -> None:
    queue.add("a")
    queue.add("a")
    assert len(queue) == 1
    assert queue.get() == "a"
    assert len(queue) == 0


def test_keys_come_out_in_order_of_adding(queue: WorkQueue[str]) -> None:
    for key in ("b", "a", "c", "a"):
        queue.add(key)
    assert [queue.get() for _ in range(3)] == ["b", "a", "c"]


def test_a_key_added_first_goes_ahead_of_every_waiting_key(queue: WorkQueue[str]) -> None:
    for key in ("a", "b", "c", "d"):
        queue.add(key)
    queue.add("exited", first=True)
    queue.add("c", first=True)  # already waiting: moved ahead, not queued twice
    assert [queue.get() for _ in range(5)] == ["c", "exited", "a", "b", "d"]


def test_a_key_added_first_while_processed_goes_first_when_done(queue: WorkQueue[str]) -> None:
    queue.add("exited")
    assert queue.get() == "exited"
    for key in ("a", "b"):
        queue.add(key)
    queue.add("exited", first=True)
    queue.done("exited")
    assert [queue.get() for _ in range(3)] == ["exited", "a", "b"]
    queue.add("exited")  # a plain add while processed again: queued last when done, as any other
    queue.add("c")
    queue.done("exited")
    assert [queue.get() for _ in range(2)] == ["c", "exited"]


def test_a_key_being_processed_is_not_handed_out_again(queue: WorkQueue[str]) -> None:
    queue.add("a")
    assert queue.get() == "a"
    queue.add("a")
    assert len(queue) == 0
    second = Getter(queue)
    assert second.got(SETTLE) is None
    queue.done("a")
    assert second.got() == "a"


def test_a_key_added_while_processed_is_requeued_once(queue: WorkQueue[str]) -> None:
    queue.add("a")
    assert queue.get() == "a"
    for _ in range(3):
        queue.add("a")
    queue.done("a")
    assert len(queue) == 1
    assert queue.get() == "a"
    queue.done("a")
    assert len(queue) == 0
    queue.add("b")
    assert queue.get() == "b"


def test_done_without_a_new_add_does_not_requeue(queue: WorkQueue[str]) -> None:
    queue.add("a")
    queue.done(queue.get())
    assert len(queue) == 0
    assert Getter(queue).got(SETTLE) is None


def test_processing_one_key_does_not_hold_up_another(queue: WorkQueue[str]) -> None:
    queue.add("a")
    assert queue.get() == "a"
    queue.add("b")
    assert queue.get() == "b"


def test_delayed_keys_come_out_in_due_order(queue: WorkQueue[str]) -> None:
    started = time.monotonic()
    queue.add_after("late", 0.12)
    queue.add_after("early", 0.04)
    assert queue.get() == "early"
    assert time.monotonic() - started >= 0.04
    assert queue.get() == "late"
    assert time.monotonic() - started >= 0.12


def test_a_waiting_getter_wakes_for_an_earlier_delayed_key(queue: WorkQueue[str]) -> None:
    getter = Getter(queue)
    queue.add_after("late", 5.0)
    queue.add_after("early", 0.03)
    started = time.monotonic()
    assert getter.got() == "early"
    assert time.monotonic() - started < 1.0


def test_add_after_without_delay_adds_at_once(queue: WorkQueue[str]) -> None:
    queue.add_after("a", 0)
    queue.add_after("b", -1)
    assert len(queue) == 2
    assert [queue.get(), queue.get()] == ["a", "b"]


def test_a_delayed_key_is_not_ready_before_its_time(queue: WorkQueue[str]) -> None:
    queue.add_after("a", 5.0)
    assert Getter(queue).got(SETTLE) is None


def test_a_delayed_key_already_queued_is_not_duplicated(queue: WorkQueue[str]) -> None:
    queue.add("a")
    queue.add_after("a", 0.01)
    wait_until(time.monotonic() + 0.02)
    assert queue.get() == "a"
    assert len(queue) == 0
    assert Getter(queue).got(SETTLE) is None


def test_a_delayed_key_coming_due_while_processed_waits_for_done(queue: WorkQueue[str]) -> None:
    queue.add("a")
    assert queue.get() == "a"
    queue.add_after("a", 0.02)
    getter = Getter(queue)
    assert getter.got(SETTLE) is None
    queue.done("a")
    assert getter.got() == "a"


def test_get_after_shut_down_raises(queue: WorkQueue[str]) -> None:
    queue.add("a")
    queue.shut_down()
    with pytest.raises(ShutDown):
        queue.get()


def test_shut_down_wakes_a_waiting_getter(queue: WorkQueue[str]) -> None:
    getter = Getter(queue)
    assert getter.got(SETTLE) is None
    queue.shut_down()
    assert getter.finished.wait(PATIENCE)
    assert isinstance(getter.error, ShutDown)


def test_shut_down_wakes_a_getter_waiting_for_a_delayed_key(queue: WorkQueue[str]) -> None:
    queue.add_after("a", 5.0)
    getter = Getter(queue)
    assert getter.got(SETTLE) is None
    queue.shut_down()
    assert getter.finished.wait(PATIENCE)
    assert isinstance(getter.error, ShutDown)


def test_adds_after_shut_down_are_ignored(queue: WorkQueue[str]) -> None:
    queue.shut_down()
    queue.add("a")
    assert len(queue) == 0


def test_many_workers_never_share_a_key(queue: WorkQueue[str]) -> None:
    active: set[str] = set()
    overlaps: list[str] = []
    handled: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                key = queue.get()
            except ShutDown:
                return
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
            time.sleep(0.001)
            if len(handled) < 150:
                queue.add(key)  # re-added while processed: must wait for done, never go to a second worker
            with lock:
                active.discard(key)
                handled.append(key)
            queue.done(key)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for thread in workers:
        thread.start()
    for key in ("a", "b", "c"):
        queue.add(key)
    deadline = time.monotonic() + PATIENCE
    while len(handled) < 150 and time.monotonic() < deadline:
        time.sleep(0.005)
    queue.shut_down()
    for thread in workers:
        thread.join(PATIENCE)
    assert len(handled) >= 150
    assert overlaps == []


# -- rate limiters ------------------------------------------------------------------------------------------------

def test_a_token_bucket_allows_its_burst_then_its_rate_per_key() -> None:
    buckets: TokenBuckets[str] = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("a", 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 10.0) == 0.5  # the next token, in half a second
    assert buckets.take("a", 10.25) == 0.25  # waiting took nothing
    assert buckets.take("a", 10.5) == 0.0
    assert buckets.take("b", 10.5) == 0.0, "each key has its own bucket"
    assert [buckets.take("a", 100.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5], "refilled up to the burst, no more"


def test_failures_back_off_exponentially_up_to_a_cap_and_are_forgotten() -> None:
    backoff: FailureBackoff[str] = FailureBackoff(initial=0.5, most=3.0)
    assert [backoff.failed("a") for _ in range(5)] == [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (5, 3.0)]
    assert backoff.failed("b") == (1, 0.5)
    backoff.forget("a")
    assert backoff.failed("a") == (1, 0.5)


def test_a_key_is_handed_out_no_faster_than_its_pace_however_often_it_is_added() -> None:
    queue: WorkQueue[str] = WorkQueue(pace=TokenBuckets(rate=20.0, burst=2))
    handed, started = 0, time.monotonic()
    try:
        while time.monotonic() - started < 0.5:
            queue.add("a")
            queue.add("a")
            queue.done(queue.get())
            handed += 1
    finally:
        queue.shut_down()
    assert handed <= 2 + 20 * 0.6, handed


def test_a_paced_key_does_not_hold_up_another() -> None:
    queue: WorkQueue[str] = WorkQueue(pace=TokenBuckets(rate=0.1, burst=1))
    queue.add("a")
    queue.done(queue.get())
    queue.add("a")  # no token for ten seconds
    queue.add("b")
    assert Getter(queue).got() == "b"
    assert len(queue) == 1  # "a" waits for its token, queued once however often it is added
    queue.add("a")
    assert len(queue) == 1
    queue.shut_down()


def test_a_failed_key_waits_for_its_back_off_until_forgotten(queue: WorkQueue[str]) -> None:
    started = time.monotonic()
    assert queue.add_failed("a") == (1, 0.5)
    assert queue.add_failed("b", most=0.05) == (1, 0.05)
    assert queue.get() == "b"
    assert queue.get() == "a" and time.monotonic() - started >= 0.5
    assert queue.add_failed("a") == (2, 1.0)
    queue.forget("a")
    assert queue.add_failed("a") == (1, 0.5)


def _voluntary_switches(native_id: int) -> int:
    status = Path(f"/proc/{os.getpid()}/task/{native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_a_delayed_key_coming_due_wakes_one_sleeping_getter_not_all(queue: WorkQueue[str]) -> None:
    """Each sleeping worker used to wait for the next due time: every due key woke them all, and all but one slept
    again. One keeps the time; the others sleep until notified."""
    queue.add_after("a", 1.0)
    getters = [Getter(queue) for _ in range(3)]
    time.sleep(SETTLE)  # all asleep: "a" is not due yet
    switches = {getter: _voluntary_switches(getter.native_id) for getter in getters}
    assert not any(getter.finished.is_set() for getter in getters)
    deadline = time.monotonic() + PATIENCE
    while not any(getter.finished.is_set() for getter in getters) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(SETTLE)  # any other getter woken by it has woken by now
    assert [getter.key for getter in getters if getter.finished.is_set()] == ["a"]
    idle = [getter for getter in getters if not getter.finished.is_set()]
    woken = [getter for getter in idle if _voluntary_switches(getter.native_id) != switches[getter]]
    assert woken == [], f"{len(woken)} getters that got nothing were woken"


def test_keys_added_together_reach_every_sleeping_getter(queue: WorkQueue[str]) -> None:
    """`add_all` wakes one sleeper; each one woken wakes the next while keys wait (join_after 0: at once)."""
    getters = [Getter(queue) for _ in range(3)]
    time.sleep(SETTLE)
    queue.add_all(["a", "b", "c"])
    assert sorted(getter.got() or "" for getter in getters) == ["a", "b", "c"]
