"""Prometheus metrics of the daemon: off unless `run --metrics-address` is given, and then on loopback only.

The names are documented in docs/guides/metrics-and-logs.md; counters carry prometheus_client's `_total` suffix.
"""

from __future__ import annotations

import ipaddress
import threading
import time

from reconciler.api.meta import ResourceKey
from reconciler.api.status import ResourceStatus
from reconciler.diff.plan import Action
from reconciler.gate.verdict import Verdict

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def loopback_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:9464' or '[::1]:9464' -> (host, port); anything but loopback is refused (local-first)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{host} is not a loopback address: metrics are served on this host only")
        return host, int(port)
    except ValueError as error:
        raise ValueError(f"--metrics-address {text!r}: {error} (expected e.g. 127.0.0.1:9464)") from None


class Metrics:
    def __init__(self) -> None:
        # Imported here: prometheus_client costs ~40 ms of start-up that every other command would pay for nothing.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = {"registry": self.registry}
        self.passes = Counter("reconciler_passes", "Passes over the whole desired state, by trigger.", ["trigger"], **labels)
        self.duration = Histogram("reconciler_reconcile_duration_seconds", "Time one reconcile of one resource took.",
                                  ["kind"], buckets=_SECONDS, **labels)
        self.actions = Counter("reconciler_actions", "Planned changes, by action and what became of them "
                               "(done, failed, denied, held).", ["kind", "action", "result"], **labels)
        self.verdicts = Counter("reconciler_policy_verdicts", "Policy gate decisions.", ["decision"], **labels)
        self.errors = Counter("reconciler_reconcile_errors", "Reconciles that raised (retried with back-off).",
                              ["kind"], **labels)
        self.ready = Gauge("reconciler_workload_ready", "1 while the workload is Ready.", ["workload"], **labels)
        self.restarts = Gauge("reconciler_workload_restarts", "Restarts of the workload.", ["workload"], **labels)
        self.model_download_bytes = Counter("reconciler_model_download_bytes", "Bytes of model artifacts fetched "
                                            "(none yet: models are local files).", **labels)
        self.event_to_action = Histogram("reconciler_event_to_action_seconds", "From a watch event (spec save, "
                                         "process or container exit) to the action it caused.", buckets=_SECONDS, **labels)
        self._triggered: dict[ResourceKey, float] = {}
        self._lock = threading.Lock()

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)

    def triggered(self, key: ResourceKey) -> None:
        """A watch event put `key` on the queue; the first one since its last action counts."""
        with self._lock:
            self._triggered.setdefault(key, time.monotonic())

    def reconciled(
        self, action: Action, verdict: Verdict | None, executed: bool, failed: bool, status: ResourceStatus | None,
        seconds: float,
    ) -> None:
        key = action.key
        self.duration.labels(key.kind).observe(seconds)
        with self._lock:
            since = self._triggered.pop(key, None)
        if action.changes_something:
            result = "failed" if failed else "done" if executed else "denied" if verdict and not verdict.approved else "held"
            self.actions.labels(key.kind, action.verb.value, result).inc()
            if executed and since is not None:
                self.event_to_action.observe(time.monotonic() - since)
        if verdict is not None:
            self.verdicts.labels(verdict.decision.value).inc()
        if key.kind != "Workload":
            return
        if status is None:  # deleted
            for gauge in (self.ready, self.restarts):
                try:
                    gauge.remove(key.name)
                except KeyError:
                    pass
            return
        ready = next((c for c in status.conditions if c.type == "Ready"), None)
        self.ready.labels(key.name).set(1 if ready is not None and ready.status.value == "True" else 0)
        self.restarts.labels(key.name).set(status.restart_count)

    def failed(self, key: ResourceKey) -> None:
        self.errors.labels(key.kind).inc()
