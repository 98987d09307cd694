"""The gateway's Prometheus metrics at GET /metrics, per model and route: requests by status, errors by reason,
latency, time to first byte, bytes each way. Labels take only names the routes file holds (a Model, a workload, a
provider): a client's made-up model name is counted as `unknown`, so no client can grow the label set."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import monotonic

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

UNKNOWN, NO_ROUTE = "unknown", "none"
# From a loopback engine's few milliseconds to a long generation's minutes.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class Exchange:
    """What one request came to: filled in as it is served, observed when it ends."""

    started: float  # time.monotonic()
    model: str = UNKNOWN  # the Model's name once the request named one the routes know
    route: str = NO_ROUTE  # 'Workload/NAME' or 'hosted/PROVIDER'
    status: int = 0  # the upstream's, when one answered
    bytes_out: int = 0  # sent upstream
    bytes_in: int = 0  # received from upstream
    first_byte: float | None = None
    classes: tuple[str, ...] = field(default=())

    def received(self, count: int) -> None:
        if self.first_byte is None:
            self.first_byte = monotonic()
        self.bytes_in += count


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels, by = {"registry": self.registry}, ["model", "route"]
        self.requests = Counter("gateway_requests", "Requests answered, by the status code the client got.",
                                [*by, "code"], **labels)
        self.errors = Counter("gateway_errors", "Requests refused or failed, by reason (the error's code).",
                              [*by, "reason"], **labels)
        self.latency = Histogram("gateway_request_duration_seconds", "From the request's arrival to its answer's end.",
                                 by, buckets=_SECONDS, **labels)
        self.first_byte = Histogram("gateway_time_to_first_byte_seconds", "From the request's arrival to the first "
                                    "byte of the upstream's answer.", by, buckets=_SECONDS, **labels)
        self.bytes = Counter("gateway_bytes", "Body bytes sent upstream (out) and received from it (in).",
                             [*by, "direction"], **labels)

    def observe(self, exchange: Exchange, status: int, reason: str | None, ended: float) -> None:
        by = (exchange.model, exchange.route)
        self.requests.labels(*by, str(status)).inc()
        if reason is not None:
            self.errors.labels(*by, reason).inc()
        self.latency.labels(*by).observe(ended - exchange.started)
        if exchange.first_byte is not None:
            self.first_byte.labels(*by).observe(exchange.first_byte - exchange.started)
        if exchange.bytes_out or exchange.bytes_in:
            self.bytes.labels(*by, "out").inc(exchange.bytes_out)
            self.bytes.labels(*by, "in").inc(exchange.bytes_in)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
