"""The generated JSON Schemas and CRDs: up to date, structural, and in agreement with the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pydantic
import pytest
import yaml

from reconciler.api.kinds import KINDS, Workload
from reconciler.api.meta import GROUP, VERSION
from reconciler.api.schemas import SCHEMA_GLOBS, render_schemas, stale_generated, write_generated

CRDS = Path(__file__).resolve().parent.parent / "crds"


def write_schemas(directory: Path) -> list[Path]:
    return write_generated(directory, render_schemas(), SCHEMA_GLOBS)


def stale_schemas(directory: Path) -> list[str]:
    return stale_generated(directory, render_schemas(), SCHEMA_GLOBS)


def workload(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workload",
        "metadata": {"name": "web"},
        "spec": {"command": ["python3", "-m", "http.server"], **spec},
    }


VALID = [
    workload(),
    workload(args=["8080"], env={"PORT": "8080"}, workingDir=None, resources={"memory": "8Gi"}),
    workload(resources={"memory": 1024}, restart={"policy": "OnFailure", "backoff": {"initialSeconds": 2}}),
]
TYPO = workload(workDir="/tmp")
BAD_QUANTITY = workload(resources={"memory": "lots"})
ZERO_BACKOFF = workload(restart={"backoff": {"initialSeconds": 0}})  # exclusiveMinimum: 0


def crd_documents() -> dict[str, dict[str, Any]]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(CRDS.glob(f"{GROUP}_*.yaml"))}


def crd_schema(kind: str) -> dict[str, Any]:
    (document,) = (d for d in crd_documents().values() if d["spec"]["names"]["kind"] == kind)
    (version,) = document["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def as_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (draft-4 style) -> something Draft4Validator understands: `nullable` becomes `anyOf` with null."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") else converted


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from schema_nodes(node[key], f"{path}[{key}]")


def test_committed_crds_are_up_to_date() -> None:
    stale = stale_schemas(CRDS)
    assert stale == [], f"crds/ is out of date ({', '.join(stale)}): run `reconciler schemas`"


def test_one_json_schema_and_one_crd_per_kind() -> None:
    names = set(render_schemas())
    assert names == {
        "workload.schema.json", "model.schema.json", "policy.schema.json",
        f"{GROUP}_workloads.yaml", f"{GROUP}_models.yaml", f"{GROUP}_policies.yaml",
    }


@pytest.mark.parametrize("document", VALID)
def test_valid_workload_passes_model_and_json_schema(document: dict[str, Any]) -> None:
    Workload.model_validate(document)
    schema = json.loads((CRDS / "workload.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)


@pytest.mark.parametrize("document", [TYPO, BAD_QUANTITY, ZERO_BACKOFF], ids=["typo", "bad-quantity", "zero-backoff"])
def test_invalid_workload_fails_model_and_json_schema(document: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Workload.model_validate(document)
    schema = json.loads((CRDS / "workload.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(document)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_schema_is_structural(kind: str) -> None:
    root = crd_schema(kind)
    assert root["properties"]["metadata"] == {"type": "object"}
    assert root["properties"]["status"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    for path, node in schema_nodes(root):
        assert not {"$ref", "$defs", "title", "patternProperties", "const"} & node.keys(), path
        assert node.get("additionalProperties", {}) is not False, path
        assert "type" in node or node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        ), f"{path} has no type"
        if "anyOf" in node:  # the only junctor Kubernetes lets carry types
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}] and node["x-kubernetes-int-or-string"], path
        assert isinstance(node.get("exclusiveMinimum", False), bool), f"{path}: OpenAPI v3.0 wants a boolean"
        assert node.get("default", ...) is not None, f"{path}: a null default says nothing"
        if "default" in node:  # Kubernetes rejects defaults that do not validate
            jsonschema.Draft4Validator(as_json_schema(node)).validate(node["default"])


def test_crd_names_and_version() -> None:
    for name, document in crd_documents().items():
        spec = document["spec"]
        assert name == f"{GROUP}_{spec['names']['plural']}.yaml"
        assert document["metadata"]["name"] == f"{spec['names']['plural']}.{GROUP}"
        assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
        assert spec["names"]["listKind"] == f"{spec['names']['kind']}List"
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
        assert version["subresources"] == {"status": {}}
    assert crd_documents()[f"{GROUP}_policies.yaml"]["spec"]["names"]["singular"] == "policy"


@pytest.mark.parametrize("document", [*VALID, TYPO], ids=["minimal", "full", "integer-memory", "typo-pruned"])
def test_crd_spec_schema_accepts_valid_and_unknown_fields(document: dict[str, Any]) -> None:
    """Kubernetes prunes unknown fields instead of rejecting them, so the typo passes here (the reconciler rejects it)."""
    spec_schema = as_json_schema(crd_schema("Workload")["properties"]["spec"])
    jsonschema.Draft4Validator(spec_schema).validate(document["spec"])


@pytest.mark.parametrize("document", [BAD_QUANTITY, ZERO_BACKOFF], ids=["bad-quantity", "zero-backoff"])
def test_crd_spec_schema_rejects_what_it_can_express(document: dict[str, Any]) -> None:
    spec_schema = as_json_schema(crd_schema("Workload")["properties"]["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(spec_schema).validate(document["spec"])


def test_write_schemas_writes_only_changes_and_removes_stale_files(tmp_path: Path) -> None:
    rendered = render_schemas()
    assert sorted(stale_schemas(tmp_path)) == sorted(rendered)
    assert sorted(path.name for path in write_schemas(tmp_path)) == sorted(rendered)
    assert stale_schemas(tmp_path) == [] and write_schemas(tmp_path) == []

    (tmp_path / "model.schema.json").write_text("{}\n")
    (tmp_path / "gone.schema.json").write_text("{}\n")
    (tmp_path / f"{GROUP}_gones.yaml").write_text("{}\n")
    (tmp_path / "README.md").write_text("not generated\n")
    assert stale_schemas(tmp_path) == ["gone.schema.json", f"{GROUP}_gones.yaml", "model.schema.json"]

    assert write_schemas(tmp_path) == [tmp_path / "model.schema.json"]
    assert stale_schemas(tmp_path) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*rendered, "README.md"])
