"""The package's layering: imports run only down the pipeline, and no module hides a standard-library one.

Each package of reconciler/ is one layer, lowest first. A module may import its own layer and those below it;
an import that runs upward (a diff that needs the gate, a record that needs the control loop) is a concept in
the wrong home, and makes the lower stage impossible to read, test or reuse without the upper one. Imports
inside functions and under TYPE_CHECKING count too: they are dependencies all the same.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reconciler"

LAYERS = [
    "base",  # what every stage may use: atomic files, locks, redaction, sizes
    "api",  # the typed kinds, statuses and records the stages hand each other
    "load",
    "observe",
    "diff",
    "gate",
    "drive",
    "record",
    "gateway",  # its own process: reads the routes file the reconciler writes
    "export",
    "control",  # wires the stages into a reconcile, queues work, runs the daemon
    "cli",
]
TOP_LEVEL = {"reconciler": "base", "reconciler.__main__": "cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            # `from reconciler.cli import git` imports the module reconciler.cli.git
            names |= {f"{target}.{alias.name}" for alias in node.names if _is_module(f"{target}.{alias.name}")}
    return {name for name in names if name == "reconciler" or name.startswith("reconciler.")}


def _layer(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    layer = module.split(".")[1]
    assert layer in LAYERS, f"{module}: reconciler/{layer} is in no layer; add it to LAYERS where its imports allow"
    return layer


def _modules() -> dict[str, set[str]]:
    return {(name := _module_name(path)): _imported(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py")
            for path in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(modules: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(module, target) for module, imported in modules.items() for target in sorted(imported)
            if LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))]


def test_imports_run_only_down_the_pipeline() -> None:
    upward = [f"{module} imports {target} ({_layer(module)} is below {_layer(target)})"
              for module, target in upward_imports(_modules())]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_module_is_named_after_a_standard_library_one() -> None:
    # run from inside its folder, or with that folder on sys.path, such a module is imported in place of the
    # standard library's; and a reader cannot tell which of the two a name means
    shadowing = [module for module in _modules() if module.rsplit(".", 1)[-1] in sys.stdlib_module_names]
    assert not shadowing


def test_the_checker_sees_relative_and_from_imports_as_modules() -> None:
    tree = ast.parse("from reconciler.record.store import StateStore\nfrom .. import gate\n")
    imported = _imported(tree, "reconciler.diff.footprint", is_package=False)
    assert imported == {"reconciler.record.store", "reconciler", "reconciler.gate"}
    assert upward_imports({"reconciler.diff.footprint": imported}) == [
        ("reconciler.diff.footprint", "reconciler.gate"), ("reconciler.diff.footprint", "reconciler.record.store")]
