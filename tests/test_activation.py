"""On-demand activation as plain functions: the diff's start and idle stop, the eviction plan, the gateway's queue."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from reconciler.api.activation import Demand
from reconciler.api.kinds import Workload
from reconciler.api.launch import render_launch
from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.diff.activation import next_idle_look
from reconciler.diff.engines import Blocked
from reconciler.diff.eviction import Resident, Room, plan_room
from reconciler.diff.plan import Inputs, Verb, note_observations, plan_resource
from reconciler.gateway.demand import Lane, QueueFull
from reconciler.observe.processes import ProcessObservation, ProcessRecord, ProcessState
from tests.test_plan import NOW, SPEC_DIR, ended, entry, note, remembered

KEY = ResourceKey("Workload", "chat")


def on_demand(idle_seconds: float = 600, **activation: Any) -> Workload:
    return Workload.model_validate({
        "apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "chat"},
        "spec": {"engine": "llama.cpp", "model": "tiny", "port": 8081,
                 "activation": {"mode": "OnDemand", "idleSeconds": idle_seconds, **activation}}})


def launch(workload: Workload):  # type: ignore[no-untyped-def]
    return render_launch(workload.spec, ("llama-server",), (), str(SPEC_DIR), "/usr/bin/llama-server")


def running(workload: Workload, started: datetime = NOW - timedelta(hours=2)) -> ProcessObservation:
    return ProcessObservation(ProcessState.running, ProcessRecord(
        name="chat", pid=4242, start_ticks=1, nonce="n", launch=launch(workload), generation=1, started_at=started))


def plan(workload: Workload, observed: ProcessObservation, demand: Demand | None, room: str | None = None):  # type: ignore[no-untyped-def]
    inputs = Inputs(KEY, entry(workload, "chat.yaml"), remembered(workload), observed, launch(workload),
                    demand=demand, room=room)
    return plan_resource(inputs, NOW)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_on_demand_needs_a_model_an_engine_serves() -> None:
    with pytest.raises(ValueError, match="activation OnDemand is for engines llama.cpp and vllm"):
        Workload.model_validate({"apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "job"},
                                 "spec": {"command": ["sleep", "9"], "activation": {"mode": "OnDemand"}}})


def test_never_asked_it_stays_idle_and_says_what_starts_it() -> None:
    action = plan(on_demand(), ProcessObservation(ProcessState.absent), None)
    assert (action.verb, action.idle) == (Verb.none, True)
    assert "starts when a request for Model/tiny reaches the gateway" in action.cause


def test_what_no_request_could_fix_is_shown_instead_of_idle_but_a_gpu_another_holds_is_not() -> None:
    missing = Inputs(KEY, entry(on_demand(), "chat.yaml"), None, ProcessObservation(ProcessState.absent),
                     blocked=Blocked("ModelMissing", "models/tiny.gguf: no such file"))
    action = plan_resource(missing, NOW)
    assert (action.verb, action.idle, action.blocked.reason) == (Verb.none, False, "ModelMissing")
    held = replace(missing, blocked=Blocked("GPUInUse", "GPU 0 is assigned to Workload/other"))
    assert plan_resource(held, NOW).idle


def test_a_request_in_flight_starts_it() -> None:
    action = plan(on_demand(), ProcessObservation(ProcessState.absent), Demand(in_flight=1, requested_at=ago(0)))
    assert action.verb is Verb.create and not action.idle


def test_a_start_that_must_wait_for_a_busy_model_says_so_and_starts_nothing() -> None:
    action = plan(on_demand(), ProcessObservation(ProcessState.absent), Demand(in_flight=1), room="GPU 0 is held")
    assert (action.verb, action.cause) == (Verb.none, "a request waits: GPU 0 is held")


def test_idle_past_idle_seconds_since_the_last_request_ended_it_is_stopped() -> None:
    demand = Demand(in_flight=0, requested_at=ago(700), last_finished_at=ago(610))
    action = plan(on_demand(600), running(on_demand(600)), demand)
    assert (action.verb, action.idle, action.failure_reason) == (Verb.stop, True, None)
    assert action.cause.startswith("idle for 610 s")


def test_a_request_in_flight_is_never_cut_by_the_idle_clock() -> None:
    demand = Demand(in_flight=1, requested_at=ago(86400), last_finished_at=ago(86400))
    assert plan(on_demand(1), running(on_demand(1)), demand).verb is Verb.none
    assert next_idle_look(on_demand(1), demand, ago(86400), NOW) is None


def test_the_idle_clock_counts_from_the_last_request_or_the_start_whichever_is_later() -> None:
    workload = on_demand(600)
    assert plan(workload, running(workload), Demand(last_finished_at=ago(300))).verb is Verb.none
    assert next_idle_look(workload, Demand(last_finished_at=ago(300)), ago(7200), NOW) == 300
    assert next_idle_look(workload, None, ago(100), NOW) == 500, "no record yet: idle since it started"


def test_an_idle_stops_exit_is_not_a_failure_and_does_not_restart_it() -> None:
    workload = on_demand()
    exit_info = ended(code=None, signal=15, ran_seconds=900)
    record = note(remembered(workload), exit_info, workload)
    assert record.next_retry_at is None and record.consecutive_failures == 0
    observed = ProcessObservation(ProcessState.exited, ProcessRecord(
        name="chat", pid=exit_info.pid, start_ticks=1, nonce="n", launch=launch(workload), generation=1,
        started_at=ago(900), exit=exit_info))
    action = plan(workload, observed, Demand(last_finished_at=ago(700)))
    assert (action.verb, action.idle) == (Verb.none, True)


def test_the_exit_of_its_own_idle_stop_or_eviction_is_no_failure_even_if_a_request_arrived_before_it_was_noted() -> None:
    """The exit is noted by the first pass after it, which may come after a new request: that request must start it
    at once, not find it backing off (the gateway would answer 503 BackOff)."""
    workload = on_demand()
    waiting = Demand(in_flight=1, requested_at=ago(0))
    stopped = ended(code=None, signal=15, ran_seconds=900).model_copy(update={"stopped_by_reconciler": True})
    record = note_observations(remembered(workload), 1, stopped, workload, waiting)
    assert record.next_retry_at is None and record.consecutive_failures == 0
    crashed = note_observations(remembered(workload), 1, ended(code=None, signal=15, ran_seconds=900), workload, waiting)
    assert crashed.next_retry_at is not None, "a crash while a request waits is still a failure"


# -- the eviction plan ---------------------------------------------------------------------------------------------


def needs(*names: str):  # type: ignore[no-untyped-def]
    """fits() of a start that needs all of `names` stopped."""
    return lambda stopped: None if set(names) <= stopped else f"held by {', '.join(sorted(set(names) - stopped))}"


def test_nothing_is_stopped_when_it_fits() -> None:
    assert plan_room([Resident("a", 0, ago(10))], needs()) == Room()


def test_the_least_recently_used_idle_one_goes_first() -> None:
    residents = [Resident("new", 0, ago(5)), Resident("old", 0, ago(500)), Resident("mid", 0, ago(50))]
    assert plan_room(residents, lambda stopped: None if stopped else "GPU 0 is held") == Room(("old",),
                                                                                             shortage="GPU 0 is held")


def test_only_the_ones_it_needs_are_stopped() -> None:
    residents = [Resident("a", 0, ago(300)), Resident("b", 0, ago(200)), Resident("c", 0, ago(100))]
    assert plan_room(residents, needs("a", "c")).evict == ("a", "c")


def test_one_serving_a_request_is_never_stopped_the_start_waits_for_it() -> None:
    room = plan_room([Resident("busy", 2, ago(900)), Resident("idle", 0, ago(1))], needs("busy"))
    assert room.evict == () and room.refuse is None
    assert room.wait == "held by busy; it starts when Workload/busy finishes the requests it serves"


def test_what_no_on_demand_workload_holds_is_refused_with_the_reason_and_nothing_stops() -> None:
    room = plan_room([Resident("idle", 0, ago(1))], needs("always-on"))
    assert room == Room(refuse="held by always-on")


# -- the gateway's queue per model -----------------------------------------------------------------------------------


def test_requests_past_the_concurrency_limit_wait_in_order_and_past_the_queue_are_refused() -> None:
    async def scenario() -> list[str]:
        lane, order, release = Lane(), [], asyncio.Event()

        async def request(name: str) -> None:
            async with lane.slot(1, 2):
                order.append(name)
                await release.wait()

        first = asyncio.create_task(request("first"))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(request(name)) for name in ("second", "third")]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="1 requests are being served and 2 wait"):
            await request("fourth")
        release.set()
        await asyncio.gather(first, *waiting)
        return order

    assert asyncio.run(scenario()) == ["first", "second", "third"]


def test_a_waiting_request_that_leaves_gives_its_place_up() -> None:
    async def scenario() -> int:
        lane, release = Lane(), asyncio.Event()

        async def request() -> None:
            async with lane.slot(1, 1):
                await release.wait()

        holder = asyncio.create_task(request())
        await asyncio.sleep(0)
        leaver = asyncio.create_task(request())
        await asyncio.sleep(0)
        leaver.cancel()
        await asyncio.sleep(0)
        late = asyncio.create_task(request())  # the queue has room again
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holder, late)
        return lane.active

    assert asyncio.run(scenario()) == 0
