"""Human and machine renderings of plans and statuses for the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.api.meta import ResourceKey
    from reconciler.api.resource_record import ResourceRecord
    from reconciler.api.status import ResourceStatus
    from reconciler.control.planning import Planned
    from reconciler.gateway.routes import RouteTable


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [headers, *rows]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def plan_rows(plans: list[Planned], edges: dict[ResourceKey, frozenset[ResourceKey]]) -> list[dict[str, Any]]:
    """`edges`: the keys each is reconciled after within one pass."""
    rows = []
    for planned in plans:
        action, verdict = planned.action, planned.verdict
        rows.append({
            "resource": str(action.key),
            "action": action.verb.value,
            "cause": action.cause,
            "generation": action.generation,
            "decision": verdict.decision.value if verdict else None,
            "reasons": [str(reason) for reason in verdict.reasons] if verdict else [],
            "auditedDenials": [str(reason) for reason in verdict.audited] if verdict else [],
            "specHash": planned.inputs.desired.spec_hash if planned.inputs.desired else None,
            "placement": planned.placement.placement.value if planned.placement else None,
            "placementMessage": planned.placement.message if planned.placement else None,
            "modelSelection": planned.model.selection.message if planned.model and planned.model.selection else None,
            "command": list(action.launch.argv) if action.launch and action.changes_something else None,
            "operations": [op.describe() for op in action.operations],
            "after": sorted(str(key) for key in edges.get(action.key, ())),
        })
    return rows


def plan_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        cause = row["cause"]
        if row["placement"] not in (None, "local"):
            cause = f"placement {row['placement']}: {row['placementMessage']}"
        if row["modelSelection"]:
            cause += f" [{row['modelSelection']}]"
        if row["decision"] and row["decision"] != "approve":
            cause += " [" + "; ".join(row["reasons"]) + "]"
        if row["auditedDenials"]:
            cause += " [audit: enforce would refuse: " + "; ".join(row["auditedDenials"]) + "]"
        if len(row["operations"]) > 1 or row["operations"] and row["operations"][0]["cause"] != row["cause"]:
            cause += " [operations: " + "; ".join(op["op"] if op["cause"] == row["cause"] else f"{op['op']} ({op['cause']})"
                                                  for op in row["operations"]) + "]"
        if row["after"] and row["action"] != "none":
            cause += f" [after {', '.join(row['after'])}]"
        if row["command"]:
            cause += f"  $ {' '.join(row['command'])}"
        body.append([row["resource"], row["action"], row["decision"] or "-", cause])
    return table(["RESOURCE", "ACTION", "DECISION", "CAUSE"], body)


def status_rows(statuses: list[ResourceStatus], records: dict[ResourceKey, ResourceRecord], now: datetime) -> list[dict[str, Any]]:
    from reconciler.api.meta import ResourceKey

    rows = []
    for status in statuses:
        record = records.get(ResourceKey(status.kind, status.name))
        spec = record.resource.get("spec", {}) if record else {}
        rows.append({
            "name": status.name, "kind": status.kind,
            "runtime": spec.get("runtime", "-") if status.kind == "Workload" else "-",
            "age": _age(status.created_at, now) if status.created_at else "-",
            "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
        })
    return rows


def status_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        status = row["status"]
        ready = next((c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), "Unknown")
        endpoints = status.get("endpoints") or ["-"]
        recovered = status.get("recovered")
        after_crash = f" ({recovered['action']} {recovered['result']} after a crash cut its record short)" if recovered else ""
        body.append([
            row["name"], row["kind"], row["runtime"], ready, status.get("placement", "-"), ", ".join(endpoints),
            str(status.get("restartCount", 0)), row["age"], f"{status.get('phase', '')}: {status.get('message', '')}".strip(": ") + after_crash,
        ])
    return table(["NAME", "KIND", "RUNTIME", "READY", "PLACEMENT", "ENDPOINT", "RESTARTS", "AGE", "MESSAGE"], body)


def routes_table(routes: RouteTable) -> str:
    """What the gateway does with a request for each model: its backends, or the reason it answers with."""
    names = [*routes.models, *routes.aliases, *routes.ambiguous]
    return table(["MODEL", "ROUTE"], [[name, routes.describe(name)] for name in names])


def with_routes(rows: list[dict[str, Any]], routes: RouteTable, served: dict[str, str]) -> list[dict[str, Any]]:
    """-o json/yaml: each Model's row carries `gatewayRoute`, what the gateway does with a request for it; a
    Workload serving a model no Model declares (`served`: workload -> model) carries that model's."""
    declared = {row["name"] for row in rows if row["kind"] == "Model"}
    aliases: dict[str, list[str]] = {}
    for alias, name in routes.aliases.items():
        aliases.setdefault(name, []).append(alias)
    for row in rows:
        model = row["name"] if row["kind"] == "Model" else served.get(row["name"]) if row["kind"] == "Workload" else None
        if model in routes.models and (row["kind"] == "Model" or model not in declared):
            row["gatewayRoute"] = {"model": model, "aliases": aliases.get(model, []), "summary": routes.describe(model),
                                   **routes.models[model].model_dump(mode="json", by_alias=True, exclude_defaults=True)}
    return rows


def dump(data: Any, output: str) -> str:
    if output == "json":
        return json.dumps(data, indent=2, default=str)
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()


def _age(created: datetime, now: datetime) -> str:
    seconds = int((now - created.astimezone(timezone.utc)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
