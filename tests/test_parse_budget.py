"""Parse cost is bounded per document, per file and per pass: documents, values as written, aliases, values as
expanded, bytes and files. Pure loader tests (read_folder on tmp_path only); the daemon-level test, a huge file
beside a workload that is killed and restarted, is in tests/faults/test_hostile_specs.py."""

from __future__ import annotations

from pathlib import Path

from reconciler.load.budget import PASS_BYTES, PASS_FILES
from reconciler.load.desired import build_desired, read_folder
from reconciler.load.validate import LoadError
from reconciler.load.yaml_source import Position
from reconciler.load.yaml_source import MAX_FILE_BYTES, parse_documents
from tests.test_load import problem, workload_yaml


def tiny_models(count: int, prefix: str = "m") -> bytes:
    return "---\n".join(f"apiVersion: localaistack.dev/v1alpha1\nkind: Model\nmetadata: {{name: {prefix}{n}}}\n"
                        "spec: {source: m.gguf}\n" for n in range(count)).encode()


def laughs(levels: int, prefix: str) -> str:
    """A document of about 20 ** levels values from 20 * (levels - 1) aliases (3 levels: 8,864 values, just below
    the per-document limit)."""
    text = f"{prefix}0: &{prefix}0 [" + ", ".join(["lol"] * 20) + "]\n"
    for level in range(1, levels):
        text += f"{prefix}{level}: &{prefix}{level} [" + ", ".join([f"*{prefix}{level - 1}"] * 20) + "]\n"
    return text


def errors(contents: dict[str, bytes]) -> dict[str, list[str]]:
    return {file: [str(error) for error in found] for file, found in build_desired(contents).errors.items()}


def test_an_alias_bomb_spread_over_many_documents_is_refused_by_the_files_budget() -> None:
    per_document = laughs(3, "l")
    assert len(parse_documents(per_document.encode())) == 1  # alone, within its own limit: 8,864 values
    found = problem("---\n".join([per_document] * 12))  # 106,000 values: what a per-document limit alone let through
    assert found.message == "the file expands to more than 50000 values (an alias bomb?): the limit per file; split it"
    assert found.position is not None and 4 * 5 < found.position.line < 4 * 6  # in the 6th document, not the 12th


def test_the_issues_bomb_of_30_documents_is_refused_before_anything_is_built() -> None:
    found = problem("---\n".join([laughs(3, "l")] * 30))  # 1,200 aliases: counted as the parser reads them
    assert found.message == "the file uses more than 1000 aliases: the limit per file; split it"


def test_a_file_of_more_than_100_documents_is_refused_at_the_101st() -> None:
    assert "many.yaml" not in errors({"many.yaml": tiny_models(100)})
    [error] = errors({"many.yaml": tiny_models(101)})["many.yaml"]
    assert error == "many.yaml:500:1: the file holds more than 100 documents: the limit per file; split it"


def test_a_file_of_ten_thousand_tiny_documents_is_one_error_and_no_resource() -> None:
    huge = tiny_models(10_000)
    assert len(huge) < MAX_FILE_BYTES  # as in the issue: 985 kB of 10,000 documents stalled restarts elsewhere
    desired = build_desired({"huge.yaml": huge, "web.yaml": workload_yaml().encode()})
    assert [key.name for key in desired.resources] == ["web"]
    assert len(desired.errors["huge.yaml"]) == 1


def test_documents_beyond_the_pass_budget_are_refused_in_that_file_and_the_files_after_it() -> None:
    contents = {f"f{n:02}.yaml": tiny_models(100, f"f{n}-") for n in range(21)} | {"z.yaml": workload_yaml().encode()}
    desired = build_desired(contents)
    assert len(desired.resources) == 2_000
    assert [str(error) for error in desired.errors["f20.yaml"]] == [
        "f20.yaml:1:1: the desired state (all its files) holds more than 2000 documents: the limit per pass; "
        "this file and those after it in name order are not loaded"]
    assert "the limit per pass" in str(desired.errors["z.yaml"][0])


def test_values_as_written_are_bounded_per_document_before_anything_is_built() -> None:
    found = problem("a: [" + ", ".join(["1"] * 10_001) + "]\n")
    assert found.message == "a document holds more than 10000 values: the limit per document"
    assert found.position == Position(1, 5 + 3 * 9_997)  # the 10,001st: the mapping, its key, the list, 9,998 items


def test_aliases_are_bounded_per_document() -> None:
    found = problem("a: &a x\nb: [" + ", ".join(["*a"] * 101) + "]\n")
    assert found.message == "a document uses more than 100 aliases: the limit per document"


def test_expanded_values_are_bounded_per_pass_across_files() -> None:
    near_limit = "---\n".join([laughs(3, "l")] * 5).encode()  # 42,000 values: within its file's limit
    found = errors({f"f{n:02}.yaml": near_limit for n in range(12)})  # not specs: each document has its errors
    over = {file: said for file, said in found.items() if "the limit per pass" in said[0]}
    assert sorted(over) == ["f09.yaml", "f10.yaml", "f11.yaml"]
    assert over["f09.yaml"][0].endswith(
        "the desired state (all its files) expands to more than 400000 values (an alias bomb?): the limit per pass; "
        "this file and those after it in name order are not loaded")


def test_reading_stops_at_the_pass_byte_budget_and_names_each_file_not_read(tmp_path: Path) -> None:
    whole_files = PASS_BYTES // (1024 * 1024)
    for n in range(whole_files + 2):
        (tmp_path / f"f{n:02}.yaml").write_bytes(b"#" * (1024 * 1024 - 1) + b"\n")
    contents = read_folder(tmp_path)
    refused = {name: content for name, content in contents.items() if isinstance(content, LoadError)}
    assert sorted(refused) == [f"f{whole_files:02}.yaml", f"f{whole_files + 1:02}.yaml"]
    assert refused[f"f{whole_files:02}.yaml"].message == (
        f"not read: the spec files read before it hold {PASS_BYTES} bytes in all, the limit per pass")


def test_reading_stops_at_the_pass_file_budget(tmp_path: Path) -> None:
    for n in range(PASS_FILES + 1):
        (tmp_path / f"f{n:04}.yaml").write_text("a: 1\n")
    contents = read_folder(tmp_path)
    last = f"f{PASS_FILES:04}.yaml"
    assert [name for name, content in contents.items() if isinstance(content, LoadError)] == [last]
    assert contents[last] == LoadError(str(tmp_path / last), f"not read: the folder holds more than {PASS_FILES} "
                                                             "spec files, the limit per pass")


def misspelt(documents: int, fields: int, prefix: str = "w") -> bytes:
    return "---\n".join(workload_yaml(f"{prefix}{n}", "  command: [x]\n" + "".join(f"  comand{i}: 1\n" for i in range(fields)))
                        for n in range(documents)).encode()


def test_errors_are_spelled_out_up_to_a_file_budget_and_the_rest_counted() -> None:
    desired = build_desired({"x.yaml": misspelt(100, 240)})  # 24,000 errors: took 16 s a pass to describe
    described = [error for error in desired.errors["x.yaml"] if error.field]
    counted = [error for error in desired.errors["x.yaml"] if not error.field]
    assert len(described) == 20 and all("did you mean 'command'?" in error.message for error in described)
    assert len(counted) == 100 and sorted({error.message for error in counted}) == [
        f"{n} more errors in this document are not shown (at most 20 are spelled out per file, 200 per pass): fix "
        "these first" for n in (220, 240)]
    assert len(desired.rejected) == 100  # each document is still refused, by its name


def test_errors_are_spelled_out_up_to_a_pass_budget() -> None:
    desired = build_desired({f"x{n:02}.yaml": misspelt(1, 30, f"f{n}-") for n in range(12)})
    described = {file: sum(1 for error in found if error.field) for file, found in desired.errors.items()}
    assert sum(described.values()) == 200 and described["x09.yaml"] == 20 and described["x10.yaml"] == 0
