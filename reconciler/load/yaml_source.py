"""YAML text -> plain documents plus a map from field path to line/column (pure, no I/O).

PyYAML's composer gives nodes with positions; we construct values ourselves so that
duplicate keys, foreign tags and alias bombs become precise errors instead of surprises.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.load.budget import OverBudget, ParseBudget, Tally, count_written, document_tally

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64

FieldPath = tuple[str | int, ...]

_ALLOWED_TAGS = {
    "tag:yaml.org,2002:" + name for name in ("str", "int", "float", "bool", "null", "map", "seq")
}
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


@dataclass(frozen=True, order=True)
class Position:
    line: int
    column: int


@dataclass(frozen=True)
class YamlProblem(Exception):
    """Why a file cannot become documents, and where."""

    message: str
    position: Position | None = None


@dataclass
class SourceDocument:
    data: Any
    start: Position
    positions: dict[FieldPath, Position] = field(default_factory=dict)

    def position_of(self, path: FieldPath) -> Position:
        """The nearest known position for a field path: the field itself, else its closest parent."""
        for end in range(len(path), 0, -1):
            found = self.positions.get(path[:end])
            if found:
                return found
        return self.start


_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the same nodes and marks


def _compose(text: str) -> list[yaml.Node]:
    try:
        return list(yaml.compose_all(text, Loader=_FAST_LOADER))
    except (yaml.YAMLError, RecursionError):  # the pure loader's messages and positions are the documented ones
        return list(yaml.compose_all(text, Loader=yaml.SafeLoader))

def parse_documents(data: bytes, budget: ParseBudget | None = None) -> list[SourceDocument]:
    """Every non-empty YAML document in `data`; raises YamlProblem for anything unreadable or over its budget
    (`budget`: the pass's, shared by the files of one snapshot; by default this file's alone)."""
    if len(data) > MAX_FILE_BYTES:
        raise YamlProblem(f"file is larger than the limit of {MAX_FILE_BYTES} bytes (1 MiB)")
    text = _decode(data)
    if not text.strip():
        raise YamlProblem("file is empty: expected at least one YAML document")
    lines = _Lines(text)
    scopes = (budget or ParseBudget()).file()
    try:
        count_written(text, scopes, _FAST_LOADER)
        nodes = _compose(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise YamlProblem(f"invalid YAML: {error.problem or error.context}", _Lines(text).at(mark)) from None
    except yaml.YAMLError as error:
        raise YamlProblem(f"invalid YAML: {error}") from None
    except RecursionError:
        raise YamlProblem("invalid YAML: nested too deeply") from None
    except OverBudget as over:
        raise YamlProblem(over.message, lines.at(over.mark)) from None
    builder = _Builder(lines, scopes)
    try:
        documents = [builder.document(node) for node in nodes if node is not None and not _is_null(node)]
    except OverBudget as over:
        raise YamlProblem(over.message, lines.at(over.mark)) from None
    if not documents:
        raise YamlProblem("file holds no YAML document with content")
    return documents


def _decode(data: bytes) -> str:
    body = data.removeprefix(b"\xef\xbb\xbf")  # a BOM is invisible in editors: lines and columns skip it
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start + len(data) - len(body)  # as a hex dump of the file shows it
        line = body[: error.start].count(b"\n") + 1
        raise YamlProblem(f"not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset}", Position(line, 1)) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise YamlProblem("binary content: NUL byte in file", Position(line, 1))
    return text


class _Lines:
    """Positions as editors and `grep -n` count them: only \\n ends a line (PyYAML also breaks at \\r, NEL,
    U+2028 and U+2029, which would shift every later error)."""

    def __init__(self, text: str) -> None:
        self._starts = [0] + [match.end() for match in re.finditer("\n", text)]

    def at(self, mark: Any) -> Position | None:
        if mark is None:
            return None
        line = bisect.bisect_right(self._starts, mark.index) - 1
        return Position(line + 1, mark.index - self._starts[line] + 1)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


class _Builder:
    def __init__(self, lines: _Lines, scopes: tuple[Tally, Tally]) -> None:
        self._constructor = SafeConstructor()
        self._scopes = scopes
        self._tallies: tuple[Tally, ...] = scopes
        self._at = lines.at

    def document(self, root: Node) -> SourceDocument:
        self._tallies = (document_tally(), *self._scopes)
        document = SourceDocument(data=None, start=self._at(root.start_mark) or Position(1, 1))
        document.data = self._value(root, (), document.positions, active=set())
        return document

    def _value(self, node: Node, path: FieldPath, positions: dict[FieldPath, Position], active: set[int]) -> Any:
        for tally in self._tallies:
            tally.add("expanded", node.start_mark)
        where = self._at(node.start_mark)
        if len(path) > MAX_DEPTH:
            raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels", where)
        if id(node) in active:
            raise YamlProblem("recursive alias: a value contains itself", where)
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        active = active | {id(node)}
        if isinstance(node, SequenceNode):
            self._check_tag(node, "tag:yaml.org,2002:seq")
            items = []
            for index, item in enumerate(node.value):
                positions[(*path, index)] = self._at(item.start_mark)
                items.append(self._value(item, (*path, index), positions, active))
            return items
        assert isinstance(node, MappingNode)
        self._check_tag(node, "tag:yaml.org,2002:map")
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key_at = self._at(key_node.start_mark)
            if not isinstance(key_node, ScalarNode):
                raise YamlProblem("mapping keys must be plain scalars", key_at)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlProblem("YAML merge keys (<<) are not supported: write the fields out", key_at)
            key = self._scalar(key_node)
            if key in mapping:
                first = positions.get((*path, key))
                raise YamlProblem(
                    f"duplicate key {key!r}" + (f" (first at line {first.line})" if first else ""), key_at
                )
            positions[(*path, key)] = key_at
            mapping[key] = self._value(value_node, (*path, key), positions, active)
        return mapping

    def _scalar(self, node: ScalarNode) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            return node.value  # dates stay text: no field of ours is a date
        self._check_tag(node, None)
        try:
            return self._constructor.construct_object(node, deep=True)
        except (ValueError, KeyError, yaml.YAMLError):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")  # the value is not shown: it may be a key
            raise YamlProblem(f"not a valid {tag} value", self._at(node.start_mark)) from None

    def _check_tag(self, node: Node, expected: str | None) -> None:
        if node.tag not in _ALLOWED_TAGS or (expected and node.tag != expected):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise YamlProblem(f"YAML tag {tag} is not allowed", self._at(node.start_mark))
