"""docs/reference/kinds.md: every kind's fields with type, default, allowed values and description, generated from
the pydantic models (the same source as crds/), so the reference cannot drift from what the loader accepts."""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel

from reconciler.api.kinds import KINDS
from reconciler.api.meta import API_VERSION, Resource

REFERENCE_FILE = "kinds.md"
_HEADER = f"""# Kinds reference ({API_VERSION})

<!-- Generated from the pydantic models by 'reconciler schemas'; do not edit. -->

Every field the loader accepts; any other field is an error. A `default` of *required* means the field must be
written. Quantities (`memory`, `size`, ...) take a number of bytes or a string such as `512Mi`, `8Gi`, `4.7Gi`.
The same models generate the JSON Schemas and CRDs in `crds/`.
"""

Schema = dict[str, Any]


def _models_under(model: type[BaseModel], found: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from `model`'s fields, by the name its JSON Schema definition takes."""
    if model.__name__ in found:
        return found
    found[model.__name__] = model
    for field in model.model_fields.values():
        pending = [field.annotation]
        while pending:
            annotation = pending.pop()
            pending.extend(typing.get_args(annotation))
            if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation.__name__ not in found:
                _models_under(annotation, found)
    return found


def _resolve(node: Schema, defs: dict[str, Schema]) -> tuple[Schema, str | None]:
    """The node with a $ref (or Optional[$ref]) replaced by its definition, and that definition's name."""
    branches = [branch for branch in node.get("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1:
        node = {**branches[0], **{key: value for key, value in node.items() if key != "anyOf"}}
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        return {**defs[name], **{key: value for key, value in node.items() if key != "$ref"}}, name
    return node, None


def _type(node: Schema, defs: dict[str, Schema]) -> str:
    node, name = _resolve(node, defs)
    if "enum" in node or "const" in node:
        return "string"
    if "properties" in node:
        return f"object ({name})" if name else "object"
    if node.get("type") == "array":
        return f"list of {_type(node.get('items', {}), defs)}"
    if node.get("type") == "object":
        values = node.get("additionalProperties") or next(iter(node.get("patternProperties", {}).values()), {})
        return f"map of string to {_type(values, defs)}" if values else "map"
    kinds = sorted({branch.get("type", "?") for branch in node.get("anyOf", []) if branch != {"type": "null"}})
    return " or ".join(kinds) if kinds else node.get("type", "any")


def _allowed(node: Schema, defs: dict[str, Schema]) -> str:
    node, _ = _resolve(node, defs)
    if "enum" in node:
        return ", ".join(f"`{value}`" for value in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if node.get("type") == "array" and "items" in node:
        return _allowed(node["items"], defs)
    bounds = []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
                      ("minLength", "length >="), ("maxLength", "length <="), ("minItems", "items >="),
                      ("maxItems", "items <=")):
        if key in node:
            bounds.append(f"{word} {node[key]}")
    if "pattern" in node:
        bounds.append(f"matches `{node['pattern']}`")
    for keys in node.get("patternProperties", {}):
        bounds.append(f"keys match `{keys}`")
    return ", ".join(bounds)


def _default(owner: type[BaseModel] | None, field: str, node: Schema, required: bool) -> str:
    if required:
        return "*required*"
    if "default" in node:
        return "none" if node["default"] is None else f"`{json.dumps(node['default'])}`"
    info = next((info for name, info in (owner.model_fields.items() if owner else ())
                 if (info.alias or name) == field), None)
    if info is None or info.default_factory is None:
        return ""
    value = info.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "its fields' defaults"
    return f"`{json.dumps(value, default=lambda item: getattr(item, 'value', str(item)))}`"


def _description(node: Schema, defs: dict[str, Schema]) -> str:
    resolved, _ = _resolve(node, defs)
    text = node.get("description") or resolved.get("description") or ""
    return " ".join(text.split())


def _rows(path: str, schema: Schema, defs: dict[str, Schema], models: dict[str, type[BaseModel]],
          owner: type[BaseModel] | None, stack: tuple[str, ...]) -> list[str]:
    rows: list[str] = []
    required = set(schema.get("required", ()))
    for field, node in schema.get("properties", {}).items():
        dotted = f"{path}.{field}" if path else field
        cells = (f"`{dotted}`", _type(node, defs), _default(owner, field, node, field in required),
                 _allowed(node, defs), _description(node, defs))
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")  # a pattern's | too
        resolved, name = _resolve(node, defs)
        if resolved.get("type") == "array":
            resolved, name = _resolve(resolved.get("items", {}), defs)
            dotted += "[]"
        elif resolved.get("type") == "object" and "properties" not in resolved:
            values = resolved.get("additionalProperties") or next(iter(resolved.get("patternProperties", {}).values()), {})
            resolved, name = _resolve(values, defs) if isinstance(values, dict) else ({}, None)
            dotted += ".<name>"
        if "properties" in resolved and name not in stack:
            rows += _rows(dotted, resolved, defs, models, models.get(name or ""), (*stack, name or ""))
    return rows


def _kind_section(kind: str, model: type[Resource]) -> str:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    models = _models_under(model, {})
    spec_name = schema["properties"]["spec"]["$ref"].removeprefix("#/$defs/")
    summary = " ".join((models[spec_name].__doc__ or model.__doc__ or "").split())
    table = ["| field | type | default | allowed | description |", "|---|---|---|---|---|"]
    table += _rows("", schema, defs, models, model, ())
    return f"## {kind}\n\n" + (f"{summary}\n\n" if summary else "") + "\n".join(table) + "\n"


def render_reference() -> dict[str, str]:
    """File name -> text of the generated reference; pure."""
    return {REFERENCE_FILE: _HEADER + "".join(f"\n{_kind_section(kind, model)}" for kind, model in KINDS.items())}
