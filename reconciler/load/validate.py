"""Plain YAML documents -> typed resources, or errors naming file, line, column, field and expectation."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.api.kinds import KINDS
from reconciler.api.meta import API_VERSION, Resource, ResourceKey
from reconciler.load.budget import DESCRIBED_PER_FILE, DESCRIBED_PER_PASS
from reconciler.load.yaml_source import FieldPath, Position, SourceDocument


@dataclass(frozen=True)
class LoadError:
    file: str
    message: str
    position: Position | None = None
    field: str | None = None
    key: ResourceKey | None = None  # the resource the error belongs to, when it can be told

    def __str__(self) -> str:
        where = self.file
        if self.position:
            where += f":{self.position.line}:{self.position.column}"
        return f"{where} {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def validate_document(file: str, document: SourceDocument, described: int = DESCRIBED_PER_FILE) -> Resource | list[LoadError]:
    """One document -> its resource, or every error in it (not just the first). `described`: how many of them may be
    spelled out (each costs a search for the field meant: 24,000 unknown fields in one file took 16 s a pass); the
    rest are counted in one more error."""
    data = document.data
    if not isinstance(data, dict):
        return [LoadError(file, f"expected a mapping with apiVersion, kind, metadata and spec, got {_type_name(data)}", document.start)]
    key = _key_if_readable(data)
    errors: list[LoadError] = []

    def error(path: FieldPath, message: str) -> None:
        errors.append(LoadError(file, message, document.position_of(path), _dotted(path), key))

    api_version, kind = data.get("apiVersion"), data.get("kind")
    if api_version != API_VERSION:
        error(("apiVersion",), f"expected {API_VERSION!r}{_got(api_version)}" if api_version else f"required: expected {API_VERSION!r}")
    if not isinstance(kind, str) or kind not in KINDS:
        expected = ", ".join(sorted(KINDS))
        error(("kind",), f"unknown kind: expected one of {expected}{_got(kind)}" if kind else f"required: expected one of {expected}")
    if errors:
        return errors
    model = KINDS[kind]
    try:
        return model.model_validate(data)
    except ValidationError as failure:
        details = failure.errors(include_url=False)
        for detail in details[:described]:
            path = tuple(part for part in detail["loc"] if part != "[key]")
            error(path, _describe(detail, model))
        if len(details) > described:
            errors.append(LoadError(file, f"{len(details) - described} more errors in this document are not shown (at "
                                          f"most {DESCRIBED_PER_FILE} are spelled out per file, {DESCRIBED_PER_PASS} "
                                          "per pass): fix these first", document.start, key=key))
        return errors


def _key_if_readable(data: dict[str, Any]) -> ResourceKey | None:
    kind, metadata = data.get("kind"), data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(kind, str) and isinstance(name, str) and kind in KINDS:
        return ResourceKey(kind, name)
    return None


def _describe(detail: Any, model: type[BaseModel]) -> str:
    kind, message, value = detail["type"], detail["msg"], detail.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return f"unknown field {str(detail['loc'][-1])!r}{_hint(detail['loc'], model)}"
    message = message.removeprefix("Value error, ")
    message = message.replace("Input should be", "expected").replace("String should", "expected a string that should")
    if kind == "string_pattern_mismatch" and detail["loc"][-2:] == ("metadata", "name"):
        message = "expected a DNS-1123 label: lower-case letters, digits and '-', starting and ending alphanumeric"
    if kind != "value_error":  # our own validators' messages are complete
        message += _got(value)
    return message


def _hint(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """The known field the unknown one most likely means: by name where it was written, else by its whole path
    (a field written one level off, e.g. spec.capabilities for spec.security.capabilities)."""
    unknown, parent = str(loc[-1]), tuple(str(part) for part in loc[:-1] if not isinstance(part, int))
    places = _field_places(model)
    close = difflib.get_close_matches(unknown, list(places), n=1, cutoff=0.75)
    if not close:
        return ""
    if parent in places[close[0]]:
        return f" (did you mean {close[0]!r}?)"
    return f" (did you mean {'.'.join((*places[close[0]][0], close[0]))}?)"


@functools.cache
def _field_places(model: type[BaseModel]) -> dict[str, list[tuple[str, ...]]]:
    """Every camelCase field name in a model tree, with the paths of the objects that have it."""
    places: dict[str, list[tuple[str, ...]]] = {}
    pending: list[tuple[type[BaseModel], tuple[str, ...], tuple[type[BaseModel], ...]]] = [(model, (), ())]
    while pending:
        current, path, ancestors = pending.pop()
        for name, info in current.model_fields.items():
            field = info.alias or name
            places.setdefault(field, []).append(path)
            for candidate in _models_in(info.annotation):
                if candidate not in ancestors:
                    pending.append((candidate, (*path, field), (*ancestors, current)))
    return {name: sorted(paths, key=len) for name, paths in places.items()}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in getattr(annotation, "__args__", ()) for found in _models_in(arg)]


def _dotted(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _got(value: Any) -> str:
    """What was found, by its type only. The one rule for every load error: a value written in a spec is never
    repeated (an env value, a fallback field, an argument may be a key: 'HF_TOKEN: 8134971574' was quoted in a
    0644 status file); the error's file:line:column and field path point at it instead."""
    return f", got {_type_name(value)}"


def _type_name(value: Any) -> str:
    return {list: "a list", dict: "a mapping", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)
