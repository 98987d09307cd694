"""When a Workload runs: Always (kept running), or OnDemand (started by the gateway's first request for its Model,
stopped when idle, and stopped to make room for another on-demand model)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from reconciler.api.meta import Spec

IDLE_PHASE = "Idle"  # an on-demand workload not running, and not failed: a request starts it


class ActivationMode(str, Enum):
    """Always: kept running; OnDemand: started when the gateway receives a request for its Model."""

    always = "Always"
    on_demand = "OnDemand"


class Activation(Spec):
    """OnDemand: not started until a request for the workload's Model reaches the gateway; stopped once idle for
    idleSeconds (never while a request is in flight), or earlier to make room for another on-demand model's start."""

    mode: ActivationMode = Field(ActivationMode.always, description="Always (the default) or OnDemand.")
    idle_seconds: float = Field(
        600.0, ge=0, le=7 * 86400,
        description="OnDemand: stopped after this long with no request (counted from the last one's end).")
    concurrency: int = Field(
        4, ge=1, le=1024, description="OnDemand: requests the gateway forwards to it at once; later ones wait in order.")
    queue_depth: int = Field(
        64, ge=0, le=4096, description="OnDemand: requests that may wait beyond those; more are refused (429).")

    @property
    def on_demand(self) -> bool:
        return self.mode is ActivationMode.on_demand


class Demand(BaseModel):
    """What the gateway last wrote about the requests for one on-demand workload (STATE/gateway/demand/NAME.json):
    the daemon starts it while one waits, and its idle clock runs from the last one's end."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    in_flight: int = Field(0, ge=0)  # requests waiting for it or being served by it
    requested_at: datetime | None = None  # the latest request's arrival
    last_finished_at: datetime | None = None  # the latest request's end
    request: str = Field("", max_length=200)  # the latest request's id, for the evidence of what it caused
    model: str = Field("", max_length=300)  # the Model it asked for
    gateway_pid: int | None = None  # the writer: counts in flight mean nothing once it is gone

    def last_active(self, started_at: datetime | None) -> datetime | None:
        """Since when nothing asked for it: the latest of a request's arrival or end, or the process's start."""
        times = [time for time in (self.requested_at, self.last_finished_at, started_at) if time is not None]
        return max(times) if times else None
