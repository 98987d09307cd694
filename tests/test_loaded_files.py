"""A snapshot validates again only the spec files whose bytes changed (`LoadedFiles`), and is the same snapshot a
load from scratch gives: same resources, same errors at the same places, same budgets. Every file is still read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import reconciler.load.desired as desired_module
from reconciler.control.reconciler import Reconciler
from reconciler.load.desired import LoadedFiles, build_desired
from tests.test_load import policy_yaml, workload_yaml
from tests.test_parse_budget import tiny_models


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The bytes of every file parsed, in order."""
    seen: list[bytes] = []
    real = desired_module.parse_documents

    def counting(data: bytes, *arguments: object) -> object:
        seen.append(data)
        return real(data, *arguments)  # type: ignore[arg-type]
    monkeypatch.setattr(desired_module, "parse_documents", counting)
    yield seen


def _same(first: desired_module.DesiredState, second: desired_module.DesiredState) -> None:
    assert first.files == second.files
    assert first.resources == second.resources
    assert {file: [str(error) for error in errors] for file, errors in first.errors.items()} == \
           {file: [str(error) for error in errors] for file, errors in second.errors.items()}
    assert first.rejected == second.rejected


def test_a_daemon_refresh_parses_only_the_file_that_changed(tmp_path: Path, parsed: list[bytes]) -> None:
    (tmp_path / "desired").mkdir()
    (tmp_path / "desired" / "policy.yaml").write_text(policy_yaml())
    for name in ("a", "b", "c"):
        (tmp_path / "desired" / f"{name}.yaml").write_text(workload_yaml(name))
    reconciler = Reconciler(tmp_path / "desired", tmp_path / "state", readonly=True)
    reconciler.refresh()
    assert len(parsed) == 4
    parsed.clear()
    reconciler.refresh()
    assert parsed == []  # the same bytes: nothing parsed or validated again
    changed = workload_yaml("b", "  command: [python3, -V]\n")
    (tmp_path / "desired" / "b.yaml").write_text(changed)
    desired = reconciler.refresh()
    assert parsed == [changed.encode()]
    assert desired.resources[desired_module.ResourceKey("Workload", "b")].resource.spec.command == ["python3", "-V"]
    _same(desired, desired_module.load_desired(tmp_path / "desired"))


def test_same_length_edits_errors_and_renames_give_what_a_load_from_scratch_gives(parsed: list[bytes]) -> None:
    loaded = LoadedFiles()
    steps = [
        {"a.yaml": workload_yaml("web").encode(), "p.yaml": policy_yaml().encode()},
        {"a.yaml": workload_yaml("wex").encode(), "p.yaml": policy_yaml().encode()},  # one byte, same size
        {"a.yaml": workload_yaml("wex", "  command: 7\n").encode(), "p.yaml": policy_yaml().encode()},  # an error
        {"a.yaml": workload_yaml("wex", "  command: 7\n").encode(), "p.yaml": policy_yaml().encode()},  # kept wrong
        {"b.yaml": workload_yaml("wex").encode(), "p.yaml": policy_yaml().encode()},  # renamed: its entry names b
        {"b.yaml": workload_yaml("wex").encode(), "c.yaml": workload_yaml("wex").encode()},  # now defined twice
    ]
    for contents in steps:
        _same(build_desired(dict(contents), "folder", loaded), build_desired(dict(contents), "folder"))
    assert len(parsed) == 2 * 12 - 5  # the unchanged policy (3 times), a.yaml and b.yaml once each: not parsed again
    assert sum(b"command: 7" in data for data in parsed) == 2 * 2  # a file with an error is validated every time


def test_the_pass_budget_counts_the_files_not_parsed_again() -> None:
    loaded = LoadedFiles()
    contents = {f"f{n:02}.yaml": tiny_models(100, f"f{n}-") for n in range(20)}
    assert len(build_desired(contents, "", loaded).resources) == 2_000  # exactly the pass's limit: all kept
    for more in ({"f20.yaml": tiny_models(1, "f20-")},  # after the kept ones: refused
                 {"a.yaml": tiny_models(1, "a-")}):  # before them: the last kept file passes the limit, where it says
        again = contents | more
        cached, scratch = build_desired(again, "", loaded), build_desired(again)
        _same(cached, scratch)
        assert len(cached.resources) == (1 + 1_900 if "a.yaml" in more else 2_000) and len(cached.errors) == 1
