"""The gateway's side of on-demand workloads: each request's arrival and end written to the workload's demand record,
and requests for one queued in order with a concurrency limit.

STATE/gateway/demand/NAME.json is replaced whole (atomically) by one writer thread, in the order the changes
happened; the daemon reads it (control/activation.py). A restarted gateway takes the records over with nothing in
flight: the requests counted there ended with the process that held them."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from reconciler.api.activation import Demand
from reconciler.base.atomic import UnsafeFile, read_regular, write_atomic

log = logging.getLogger("reconciler.gateway")

class QueueFull(Exception):
    pass


class Lane:
    """At most `concurrency` requests of one Model forwarded at once; up to `depth` more wait, first come first
    served; beyond that a request is refused (QueueFull), never dropped silently."""

    def __init__(self) -> None:
        self.active = 0
        self.waiting: deque[asyncio.Future[None]] = deque()

    def refuse_if_full(self, concurrency: int, depth: int) -> None:
        if (self.active >= concurrency or self.waiting) and len(self.waiting) >= depth:
            raise QueueFull(f"{self.active} requests are being served and {len(self.waiting)} wait (queueDepth {depth})")

    @asynccontextmanager
    async def slot(self, concurrency: int, depth: int) -> AsyncIterator[None]:
        if self.active >= concurrency or self.waiting:
            self.refuse_if_full(concurrency, depth)
            turn = asyncio.get_running_loop().create_future()
            self.waiting.append(turn)
            try:
                await turn  # the slot is handed over by the request that leaves it: no one overtakes
            except BaseException:
                if turn.done() and not turn.cancelled():
                    self._hand_over()  # it was given a slot just as it left: pass the slot on
                else:
                    with suppress(ValueError):
                        self.waiting.remove(turn)
                raise
        else:
            self.active += 1
        try:
            yield
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot moves to it: `active` is unchanged
                return
        self.active -= 1


class DemandBook:
    """The demand records this gateway writes, one per on-demand workload."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._records: dict[str, Demand] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demand")  # one: writes stay in order
        self._pid = os.getpid()

    def adopt(self) -> None:
        """Take over the records a gateway before this one wrote: nothing is in flight now (those requests ended
        with it), and what it did keeps the idle clocks."""
        try:
            names = sorted(path for path in self.directory.glob("*.json") if not path.name.startswith("."))
        except OSError:
            return
        now = _now()
        for path in names:
            try:
                before = Demand.model_validate_json(read_regular(path, root=self.directory))
            except (OSError, UnsafeFile, ValidationError) as problem:
                log.warning("%s: not taken over: %s", path, problem)
                continue
            ended = {"last_finished_at": now} if before.in_flight else {}
            self._records[path.stem] = before.model_copy(update={"in_flight": 0, "gateway_pid": self._pid, **ended})
            self._write(path.stem, self._records[path.stem])

    @asynccontextmanager
    async def request(self, workload: str, model: str) -> AsyncIterator[str]:
        """Counts one request for `workload` in flight from arrival to end, both written before going on."""
        request_id = uuid.uuid4().hex[:16]
        await self._change(workload, lambda d: d.model_copy(update={
            "in_flight": d.in_flight + 1, "requested_at": _now(), "request": request_id, "model": model,
            "gateway_pid": self._pid}))
        try:
            yield request_id
        finally:
            await asyncio.shield(self._change(workload, lambda d: d.model_copy(update={
                "in_flight": max(0, d.in_flight - 1), "last_finished_at": _now()})))

    async def _change(self, workload: str, change: Callable[[Demand], Demand]) -> None:
        record = change(self._records.get(workload) or Demand())
        self._records[workload] = record
        await asyncio.get_running_loop().run_in_executor(self._writer, self._write, workload, record)

    def _write(self, workload: str, record: Demand) -> None:
        try:  # from the folder itself, the daemon hands it to this user: the state directory above is not listable
            write_atomic(self.directory / f"{workload}.json", record.model_dump_json(by_alias=True) + "\n", 0o600,
                         root=self.directory)
        except OSError as problem:  # the request is still served; the daemon sees the next write
            log.error("the demand record of Workload/%s is not written: %s", workload, problem)

    def close(self) -> None:
        self._writer.shutdown(wait=True)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class OnDemandRequests:
    """A request for an on-demand workload's Model: counted in flight from arrival to end (written to its demand
    record, which starts it and holds its idle clock), and forwarded in order within its concurrency limit."""

    def __init__(self, book: DemandBook) -> None:
        self.book = book
        self.lanes: dict[str, Lane] = {}

    @asynccontextmanager
    async def serving(self, workload: str, model: str, concurrency: int, depth: int) -> AsyncIterator[str]:
        lane = self.lanes.setdefault(workload, Lane())
        lane.refuse_if_full(concurrency, depth)  # before it is counted: a refused request does not wake a model
        async with self.book.request(workload, model) as request_id, lane.slot(concurrency, depth):
            yield request_id
