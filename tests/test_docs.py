"""The documentation cannot go stale: every YAML block in README.md and docs/ is checked by the real loader, the
generated kinds reference matches the models, and the shipped folders validate."""

from __future__ import annotations

import re
import subprocess
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from reconciler.api.kinds import KINDS
from reconciler.api.meta import API_VERSION
from reconciler.api.reference import REFERENCE_FILE, render_reference
from reconciler.api.schemas import stale_generated
from reconciler.load.desired import build_desired, load_desired
from tests.conftest import PYTHON

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# The comment right above a block says what it is: a whole spec file (no comment), part of one kind's document
# (merged into a minimal valid one), a file the reconciler writes, or a spec that must fail with the given text.
MARKER = re.compile(r"<!-- (fragment: (?P<kind>\w+)|output|invalid: (?P<expected>.+?)) -->")
# What a fragment is merged into: the least each kind needs to be valid.
BASES: dict[str, dict[str, Any]] = {
    "Workload": {"spec": {"command": ["python3"]}},
    "Model": {"spec": {"source": "models/m.gguf"}},
    "Policy": {"spec": {}},
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    marker: str  # the whole marker comment, or "" for a whole spec file
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def yaml_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, start, marker = [], None, ""
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```yaml":
            previous = next((text.strip() for text in reversed(lines[:number - 1]) if text.strip()), "")
            start, marker = number, previous if previous.startswith("<!--") else ""
        elif start is not None and line.strip() == "```":
            body = "\n".join(text[len(lines[start - 1]) - len(lines[start - 1].lstrip()):] for text in lines[start:number - 1])
            blocks.append(Block(page, start, marker, body + "\n"))
            start = None
    return blocks


BLOCKS = [block for page in PAGES for block in yaml_blocks(page)]


def deep_merge(base: Any, fragment: Any) -> Any:
    if isinstance(base, dict) and isinstance(fragment, dict):
        return {**base, **{key: deep_merge(base.get(key), value) for key, value in fragment.items()}}
    return fragment


def load_errors(text: str) -> list[str]:
    state = build_desired({"doc.yaml": text.encode()}, display_root="docs")
    return [str(error) for errors in state.errors.values() for error in errors]


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_every_yaml_block_in_the_docs_is_what_it_says(block: Block) -> None:
    found = MARKER.fullmatch(block.marker) if block.marker else None
    assert not block.marker or found, f"{block}: unknown marker {block.marker!r} (fragment: KIND, output, invalid: TEXT)"
    if found and found["kind"]:
        assert found["kind"] in KINDS, f"{block}: no kind {found['kind']}"
        document = {"apiVersion": API_VERSION, "kind": found["kind"], "metadata": {"name": "example"},
                    **deep_merge(BASES[found["kind"]], yaml.safe_load(block.text))}
        assert load_errors(yaml.safe_dump(document)) == [], f"{block}: the fragment does not validate"
    elif found and found["expected"]:
        errors = load_errors(block.text)
        assert any(found["expected"] in error for error in errors), f"{block}: expected {found['expected']!r}, got {errors}"
    elif found:
        assert list(yaml.safe_load_all(block.text)), f"{block}: an output block that is not YAML"
    else:
        assert load_errors(block.text) == [], f"{block}: a spec in the docs does not validate"
        assert build_desired({"doc.yaml": block.text.encode()}).resources, f"{block}: declares nothing"


def test_the_block_checker_catches_a_stale_example() -> None:
    """A field the models no longer have, in a block written as the docs write them, is caught with its place."""
    stale = "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec:\n  commandd: [x]\n"
    assert any("spec.commandd" in error for error in load_errors(stale))


def test_every_shipped_folder_validates() -> None:
    folders = [ROOT / "desired-state", *sorted(path for path in (ROOT / "examples").iterdir() if path.is_dir())]
    for folder in folders:
        state = load_desired(folder)
        assert state.errors == {} and state.resources, f"{folder.relative_to(ROOT)}: {state.errors}"


def test_generated_kinds_reference_is_up_to_date() -> None:
    stale = stale_generated(ROOT / "docs" / "reference", render_reference(), (REFERENCE_FILE,))
    assert stale == [], "docs/reference/kinds.md is out of date: run `reconciler schemas` (or `make schemas`)"


def test_kinds_reference_names_every_field_of_every_kind() -> None:
    text = render_reference()[REFERENCE_FILE]
    missing = []
    for kind, model in KINDS.items():
        section = text.split(f"\n## {kind}\n", 1)[1].split("\n## ", 1)[0]
        for path in field_paths(model):
            if f"| `{path}` |" not in section:
                missing.append(f"{kind} {path}")
    assert missing == []


def test_every_field_in_the_reference_is_described() -> None:
    """A field without a description (Field(description=...) or its type's docstring) is a row a newcomer cannot
    use; `kind` says itself in the allowed column."""
    rows = [line for line in render_reference()[REFERENCE_FILE].splitlines() if line.startswith("| `")]
    bare = [row.split(" | ")[0].strip("| `") for row in rows if row.endswith(" |  |") and not row.startswith("| `kind`")]
    assert bare == [], f"fields without a description: {bare}"


def field_paths(model: type[BaseModel], prefix: str = "", seen: tuple[type, ...] = ()) -> list[str]:
    """Every field's dotted path, walked from the pydantic classes themselves (not from the JSON Schema the
    reference is rendered from)."""
    paths = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        paths.append(path)
        for inner, suffix in nested_models(info.annotation):
            if inner not in seen:
                paths += field_paths(inner, f"{path}{suffix}.", (*seen, inner))
    return paths


def nested_models(annotation: Any, suffix: str = "") -> list[tuple[type[BaseModel], str]]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple):
        return [found for arg in args for found in nested_models(arg, "[]")]
    if origin is dict:
        return nested_models(args[1], ".<name>")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, suffix)]
    return [found for arg in args for found in nested_models(arg, suffix)]


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """mkdocs.yml is strict: a broken link or anchor, or a page left out of the navigation, fails the build."""
    pytest.importorskip("mkdocs")
    built = subprocess.run([PYTHON, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "reference" / "kinds" / "index.html").is_file()


def test_schemas_command_checks_and_writes_the_reference(tmp_path: Path) -> None:
    crds, docs = tmp_path / "crds", tmp_path / "reference"
    command = [PYTHON, "-m", "reconciler", "schemas", "--out", str(crds), "--docs", str(docs)]
    stale = subprocess.run([*command, "--check"], capture_output=True, text=True)
    assert stale.returncode == 1 and f"stale: {docs / REFERENCE_FILE}" in stale.stdout
    written = subprocess.run(command, capture_output=True, text=True)
    assert written.returncode == 0 and f"wrote {docs / REFERENCE_FILE}" in written.stdout
    assert (docs / REFERENCE_FILE).read_text() == render_reference()[REFERENCE_FILE]
    assert subprocess.run([*command, "--check"], capture_output=True, text=True).returncode == 0
