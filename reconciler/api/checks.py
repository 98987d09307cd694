"""Health checks: how the reconciler asks a workload whether it is alive, or ready (http, tcp or exec)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from reconciler.api.meta import Spec

Port = Annotated[int, Field(ge=1, le=65535)]


class HttpCheck(Spec):
    """Healthy when GET path answers expectStatus."""

    path: str = Field("/health", pattern=r"^/", description="The path requested.")
    port: Port | None = Field(None, description="Default: spec.port.")
    expect_status: int = Field(200, ge=100, le=599, description="The status a healthy answer has.")


class TcpCheck(Spec):
    """Healthy when a TCP connection to the port opens."""

    port: Port | None = Field(None, description="Default: spec.port.")


class ExecCheck(Spec):
    """Healthy when the command exits 0 (run inside the container for a container workload)."""

    command: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="Exit 0 means healthy; no shell.")


class HealthCheck(Spec):
    """Exactly one of http, tcp or exec. A workload with a check is Ready only while its last check passed."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: ExecCheck | None = None
    initial_delay_seconds: float = Field(0.0, ge=0, description="No check before this many seconds after a start.")
    period_seconds: float = Field(5.0, gt=0, le=3600, description="Seconds between checks.")
    timeout_seconds: float = Field(2.0, gt=0, le=600, description="A check that takes longer fails.")
    failure_threshold: int = Field(
        3, ge=1, le=100,
        description="Failures in a row, once healthy, that stop the process (its restart policy decides what next).")
    startup_seconds: float = Field(
        300.0, gt=0, description="How long a start may take to pass its first check (model loads are slow)."
    )

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> "HealthCheck":
        kinds = [name for name in ("http", "tcp", "exec") if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of http, tcp, exec (got {', '.join(kinds) or 'none'})")
        return self
