"""JSON Schemas (for editors) and CustomResourceDefinitions (for Kubernetes), generated from the pydantic models;
and how any generated folder (these, docs/reference) is kept up to date and checked for staleness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from reconciler.api.kinds import KINDS
from reconciler.api.meta import API_VERSION, GROUP, VERSION, Resource
from reconciler.base.atomic import write_atomic

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
CRD_HEADER = "# Generated from the pydantic models by 'reconciler schemas'; do not edit.\n"
SCHEMA_GLOBS = ("*.schema.json", f"{GROUP}_*.yaml")

Schema = dict[str, Any]


def _plural(kind: str) -> str:
    """Workload -> workloads, Policy -> policies."""
    lower = kind.lower()
    return f"{lower[:-1]}ies" if lower.endswith("y") else f"{lower}s"


def _model_schema(model: type[Resource]) -> Schema:
    return model.model_json_schema(by_alias=True, mode="validation")


def _json_schema(kind: str, model: type[Resource]) -> Schema:
    """The whole resource as JSON Schema 2020-12, for yaml-language-server and friends."""
    return {
        **_model_schema(model),
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"https://{GROUP}/schemas/{VERSION}/{kind.lower()}.schema.json",
        "title": f"{kind} ({API_VERSION})",
    }


def _int_or_string(branches: list[Schema]) -> Schema:
    """A quantity's `anyOf: [string, integer]` in the one spelling a structural schema accepts."""
    if sorted(branch.get("type", "") for branch in branches) != ["integer", "string"]:
        raise ValueError(f"cannot express anyOf {branches} in a structural schema")
    merged: Schema = {key: value for branch in branches for key, value in branch.items() if key != "type"}
    return {**merged, "anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}


def _structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Rewrite one pydantic JSON Schema node into a Kubernetes structural (OpenAPI v3.0) schema node."""
    node = dict(node)
    if "$ref" in node:  # the referring node's default/description win over the definition's
        node = {**defs[node.pop("$ref").removeprefix("#/$defs/")], **node}
        return _structural(node, defs)
    if "anyOf" in node:
        branches = [branch for branch in node.pop("anyOf") if branch != {"type": "null"}]
        if len(branches) == 1:  # Optional[X]: X itself, marked nullable
            return _structural({**branches[0], **node, "nullable": True}, defs)
        node = {**_int_or_string(branches), **node}
    if "patternProperties" in node:  # Kubernetes has no key patterns: the reconciler still checks them
        (value_schema,) = node.pop("patternProperties").values()
        node["additionalProperties"] = value_schema
    for bound in ("Minimum", "Maximum"):  # JSON Schema 2020-12 numbers -> OpenAPI v3.0 booleans
        if f"exclusive{bound}" in node:
            node[bound.lower()] = node.pop(f"exclusive{bound}")
            node[f"exclusive{bound}"] = True
    if node.get("additionalProperties") is False:  # forbidden in CRDs; the API server prunes instead
        del node["additionalProperties"]
    if node.get("default", ...) is None:
        del node["default"]
    node.pop("title", None)
    if "properties" in node:
        node["properties"] = {name: _structural(child, defs) for name, child in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _structural(node[key], defs)
    return dict(sorted(node.items()))


def _crd(kind: str, model: type[Resource]) -> dict[str, Any]:
    """A served+storage v1 CustomResourceDefinition whose spec schema is derived from the model."""
    schema = _model_schema(model)
    spec = _structural(schema["properties"]["spec"], schema.get("$defs", {}))
    names = {"kind": kind, "listKind": f"{kind}List", "plural": _plural(kind), "singular": kind.lower()}
    open_api_schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{names['plural']}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": open_api_schema},
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """The CustomResourceDefinition of every kind, as crds/ holds them."""
    return [_crd(kind, model) for kind, model in KINDS.items()]


def render_schemas() -> dict[str, str]:
    """File name -> file text for every kind; pure."""
    files: dict[str, str] = {}
    for kind, model in KINDS.items():
        files[f"{kind.lower()}.schema.json"] = json.dumps(_json_schema(kind, model), indent=2, sort_keys=True) + "\n"
        files[f"{GROUP}_{_plural(kind)}.yaml"] = CRD_HEADER + yaml.safe_dump(_crd(kind, model), sort_keys=False)
    return files


def _generated_files(directory: Path, globs: tuple[str, ...]) -> dict[str, Path]:
    return {path.name: path for pattern in globs for path in directory.glob(pattern)}


def write_generated(directory: Path, rendered: dict[str, str], globs: tuple[str, ...]) -> list[Path]:
    """Bring `directory` up to date: write changed files, delete stale generated ones; returns what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, text in rendered.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_atomic(path, text)
            written.append(path)
    for name, path in _generated_files(directory, globs).items():
        if name not in rendered:
            path.unlink()
    return written


def stale_generated(directory: Path, rendered: dict[str, str], globs: tuple[str, ...]) -> list[str]:
    """Names of generated files that are missing, differ from `rendered`, or are no longer rendered."""
    on_disk = _generated_files(directory, globs)
    return sorted(
        name
        for name in rendered.keys() | on_disk.keys()
        if name not in rendered or name not in on_disk or on_disk[name].read_text(encoding="utf-8") != rendered[name]
    )

