"""`reconciler describe`: one resource's story, read from what the reconciler keeps."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.api.kinds import Workload
from reconciler.api.meta import Resource
from reconciler.api.quantity import format_bytes
from reconciler.api.status import ResourceStatus, RolloutStatus
from reconciler.api.workload import Runtime
from reconciler.base.atomic import read_regular
from reconciler.gateway.routes import RouteTable
from reconciler.record.evidence import HOSTED_REQUEST
from reconciler.record.recorder import sibling

EVENTS_SHOWN = 10


def spec_summary(resource: Resource) -> str | None:
    """One line of what was asked for, in the spec's own words."""
    if not isinstance(resource, Workload):
        return None
    spec = resource.spec
    parts = [f"runtime {spec.runtime.value}", f"engine {spec.engine.value}"]
    parts += [f"image {spec.image} (pull: {spec.image_pull_policy.value})"] if spec.image else []
    parts += [f"model {spec.model}"] if spec.model else []
    parts += [f"ports {', '.join(f'{p.host_ip}:{p.published_port}->{p.container_port}/{p.protocol}' for p in spec.ports)}"] \
        if spec.ports else ([f"listens {spec.host}:{spec.port}"] if spec.port else [])
    limits = spec.resources
    parts += [f"memory {format_bytes(limits.memory)}"] if limits.memory else []
    parts += [f"cpus {limits.cpus:g}"] if limits.cpus else []
    parts += [f"gpus {limits.gpus.indices if limits.gpus.indices is not None else limits.gpus.count}"] if limits.gpus.wanted else []
    parts += [f"restart {spec.restart.policy.value}"]
    return ", ".join(parts)


def describe(status: ResourceStatus, source: str, root: Path, log_lines: list[str], spec: str | None = None) -> str:
    fields = [
        ("Name", status.name), ("Kind", status.kind), ("Source", source), ("Spec", spec),
        ("Generation", f"{status.generation} (observed {status.observed_generation})"),
        ("Phase", status.phase), ("Placement", status.placement.value if status.placement else None),
        ("Message", status.message), ("Endpoints", ", ".join(status.endpoints) or None),
        ("Listening", (", ".join(status.listening) or "nothing") if status.listening is not None else None),
        ("Command", " ".join(status.command) if status.command else None), ("Pid", status.pid),
        ("Container", status.container_id[:12] if status.container_id else None),
        ("Image", f"{status.image} ({status.image_id})" if status.image else None),
        ("GPUs", status.gpus), ("Limits", "; ".join(f"{k}: {v}" for k, v in (status.enforcement or {}).items()) or None),
        ("Health", status.health), ("Restarts", status.restart_count),
        ("Last exit", status.last_exit.describe() if status.last_exit else None),
        ("Recovered", f"{status.recovered.action} {status.recovered.result} at {status.recovered.at:%Y-%m-%d %H:%M:%S}: "
                      f"{status.recovered.cause}" if status.recovered else None),
        ("Next start", status.next_retry_time.isoformat() if status.next_retry_time else None),
        ("Rollout", _rollout(status.rollout) if status.rollout else None),
        ("Log", status.log_file),
    ]
    lines = [f"{label + ':':<12} {value}" for label, value in fields if value not in (None, "", [])]
    lines += ["", "Conditions:"]
    lines += [f"  {c.type:<15} {c.status.value:<7} {c.reason:<20} since {c.last_transition_time:%Y-%m-%d %H:%M:%S}  {c.message}"
              for c in status.conditions]
    if status.decision_record:
        lines += ["", "Decision record (constraint -> trade-off):"]
        lines += [f"  {question:<22} {answer['constraint']} -> {answer['tradeOff']}"
                  for question, answer in status.decision_record.get("questions", {}).items()]
    lines += ["", f"Events (the last {EVENTS_SHOWN} evidence records of {sibling(source, '.evidence.jsonl')}):"]
    for event in _events(root, sibling(source, ".evidence.jsonl"), f"{status.kind}/{status.name}"):
        if event["event"] == "decision-record":
            placement = event.get("record", {}).get("placement", {})
            lines.append(f"  {event['time'][:19]}  record   placement {placement.get('placement', '-')}: {placement.get('message', '')}")
            continue
        if event["event"] == HOSTED_REQUEST:
            lines.append(f"  {event['time'][:19]}  hosted   {event.get('status', '-'):<8} {event.get('outcome', '-'):<8} "
                         f"{event.get('path')} to {event.get('provider')} ({event.get('region')}): "
                         f"{', '.join(event.get('classes', []))}; {event.get('bytesOut')} B out, {event.get('bytesIn')} B in")
            continue
        verdict = event.get("decision") or event.get("result") or event.get("outcome") or "-"
        cause = event.get("cause") or event.get("message", "")
        lines.append(f"  {event['time'][:19]}  {event['event']:<8} {event.get('action', '-'):<8} {verdict:<8} {cause}"
                     + (f" {event['failure']['message']}" if "failure" in event else ""))
    if log_lines and status.phase not in ("Running",):
        lines += ["", "Last log lines:"] + [f"  {line}" for line in log_lines]
    return "\n".join(lines)


def model_access(model: str, served: dict[str, str], routes: RouteTable | None, gateways: list[str],
                 users: list[tuple[str, Runtime, tuple[str, ...] | None]]) -> list[str]:
    """`describe Model/NAME`: who may use it: the workloads that serve it, what the gateway does with a request for
    it, and the workloads that declare they use a gateway for it (the only containers the gateway admits)."""
    serving = ", ".join(f"Workload/{name}" for name, named in sorted(served.items()) if named == model)
    lines = ["", "Who may use it:", f"  Served by    {serving or 'no Workload: add one whose spec.model names it'}"]
    if routes is None or model not in routes.models:
        return [*lines, "  Gateway      none declared: a client calls a serving workload's endpoint itself"]
    aliases = sorted(alias for alias, named in routes.aliases.items() if named == model)
    asked = ", ".join(repr(name) for name in [model, *aliases])
    using = ", ".join(f"Workload/{name} ({runtime.value}; {'any model' if named is None else 'models ' + ', '.join(named)})"
                      for name, runtime, named in users if named is None or {model, *aliases} & set(named))
    return [*lines, f"  Gateway      {', '.join(gateways) or 'not serving now'}: any process on this host, as model "
                    f"{asked}; a container only if it declares it in spec.uses", f"  Route        {routes.describe(model)}",
            f"  Used by      {using or 'no Workload declares it (spec.uses of a gateway)'}"]


def _rollout(rollout: RolloutStatus) -> str:
    good = f"known-good generation {rollout.known_good_generation}" if rollout.known_good_generation else "no known-good"
    return f"generation {rollout.generation} {rollout.state.value}: {rollout.message} ({good}; rollback {rollout.rollback})"


def _events(root: Path, evidence: str, resource: str) -> list[dict]:
    try:  # a planted link is not quoted, a FIFO does not block: the status's errors say why nothing shows
        text = read_regular(root / evidence, root=root).decode("utf-8")
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    return [record for record in records if record.get("resource") == resource][-EVENTS_SHOWN:]
