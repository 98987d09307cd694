"""Load: YAML text -> documents with positions -> validated resources -> one desired-state snapshot.

Pure except for `read_folder`, which is exercised on tmp_path only.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from reconciler.api.kinds import Policy, Workload, spec_hash
from reconciler.api.meta import ResourceKey
from reconciler.api.quantity import format_bytes, parse_bytes
from reconciler.load.desired import build_desired, is_spec_file, load_desired, output_stem, read_folder
from reconciler.load.validate import LoadError, validate_document
from reconciler.load.yaml_source import MAX_FILE_BYTES, Position, YamlProblem, parse_documents

WEB = ResourceKey("Workload", "web")


def workload_yaml(name: str = "web", spec: str = "  command: [python3]\n") -> str:
    """A Workload document; `spec` starts on line 6 (line 5 is `spec:`)."""
    return (
        "apiVersion: localaistack.dev/v1alpha1\n"  # 1
        "kind: Workload\n"  # 2
        "metadata:\n"  # 3
        f"  name: {name}\n"  # 4
        "spec:\n"  # 5
        + spec
    )


def policy_yaml(name: str = "workstation", executable: str = "python3") -> str:
    return (
        "apiVersion: localaistack.dev/v1alpha1\n"
        "kind: Policy\n"
        f"metadata:\n  name: {name}\n"
        f"spec:\n  native:\n    trustedExecutables:\n      - executable: {executable}\n"
    )


def problem(data: str | bytes) -> YamlProblem:
    """The YamlProblem that parsing `data` raises."""
    with pytest.raises(YamlProblem) as raised:
        parse_documents(data.encode() if isinstance(data, str) else data)
    return raised.value


def errors_of(text: str, file: str = "chat.yaml") -> list[LoadError]:
    errors: list[LoadError] = []
    for document in parse_documents(text.encode()):
        result = validate_document(file, document)
        assert isinstance(result, list), f"expected errors, got a valid {result.key}"
        errors.extend(result)
    return errors


def only_error(text: str, file: str = "chat.yaml") -> LoadError:
    errors = errors_of(text, file)
    assert len(errors) == 1, [str(error) for error in errors]
    return errors[0]


def valid(text: str) -> Workload:
    (document,) = parse_documents(text.encode())
    result = validate_document("chat.yaml", document)
    assert not isinstance(result, list), [str(error) for error in result]
    return result


def billion_laughs(levels: int = 9) -> str:
    text = 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for level in range(1, levels):
        text += f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]\n"
    return text


# -- LoadError formatting -----------------------------------------------------------------------


def test_load_error_str_is_file_line_column_field_message() -> None:
    error = LoadError("apps/chat.yaml", "expected a valid list", Position(6, 3), "spec.command")
    assert str(error) == "apps/chat.yaml:6:3 spec.command: expected a valid list"


def test_load_error_str_without_field_or_position() -> None:
    assert str(LoadError("chat.yaml", "file is empty", Position(1, 1))) == "chat.yaml:1:1: file is empty"
    assert str(LoadError("chat.yaml", "cannot read file: Permission denied")) == "chat.yaml: cannot read file: Permission denied"
    assert str(LoadError("chat.yaml", "required", None, "spec")) == "chat.yaml spec: required"


# -- validation: field errors at their line and column -------------------------------------------


def test_wrong_type_names_field_line_and_column() -> None:
    error = only_error(workload_yaml(spec="  command: python3\n"))
    assert str(error) == "chat.yaml:6:3 spec.command: expected a valid list, got a string"
    assert error.key == WEB


def test_wrong_type_in_a_list_item_points_at_the_item() -> None:
    error = only_error(workload_yaml(spec="  command: [python3]\n  args: [--port, 8080]\n"))
    assert (error.position, error.field) == (Position(7, 18), "spec.args[1]")
    assert error.message == "expected a valid string, got a number"


def test_a_number_where_an_env_value_belongs_is_named_by_its_type_never_repeated() -> None:
    error = only_error(workload_yaml(spec="  command: [python3]\n  env:\n    HF_TOKEN: 8134971574\n"))
    assert str(error) == "chat.yaml:8:5 spec.env.HF_TOKEN: expected a valid string, got a number"


def test_a_value_a_standard_tag_refuses_is_not_repeated() -> None:
    found = problem("env:\n  HF_TOKEN: !!int hf_secret_value\n")
    assert (found.message, found.position) == ("not a valid !!int value", Position(2, 13))


def test_bad_quantity_says_what_a_quantity_looks_like() -> None:
    error = only_error(workload_yaml(spec="  command: [python3]\n  resources:\n    memory: lots\n"))
    assert (error.position, error.field) == (Position(8, 5), "spec.resources.memory")
    assert "expected a quantity like 8Gi" in error.message
    assert "lots" not in error.message  # a value is never repeated: the position points at it


def test_unknown_field_suggests_the_closest_known_one() -> None:
    error = only_error(workload_yaml(spec="  command: [python3]\n  resorces:\n    memory: 1Gi\n"))
    assert (error.position, error.field) == (Position(7, 3), "spec.resorces")
    assert error.message == "unknown field 'resorces' (did you mean 'resources'?)"


def test_unknown_field_suggestion_uses_camel_case_names() -> None:
    error = only_error(workload_yaml(spec="  command: [python3]\n  workDir: /tmp\n"))
    assert error.message == "unknown field 'workDir' (did you mean 'workingDir'?)"


def test_a_field_written_at_the_wrong_level_is_pointed_to_where_it_belongs() -> None:
    error = only_error(workload_yaml(spec="  runtime: container\n  image: busybox:1.36\n  capabilities: [NET_RAW]\n"))
    assert error.message == "unknown field 'capabilities' (did you mean spec.security.capabilities?)"
    error = only_error(workload_yaml(spec="  command: [python3]\n  restart:\n    initialSeconds: 2\n"))
    assert error.message == "unknown field 'initialSeconds' (did you mean spec.restart.backoff.initialSeconds?)"


def test_unknown_field_without_a_close_match_gives_no_suggestion() -> None:
    error = only_error(workload_yaml(spec="  command: [python3]\n  zzzqqq: 1\n"))
    assert error.message == "unknown field 'zzzqqq'"


def test_missing_required_field_points_at_its_parent() -> None:
    error = only_error(workload_yaml(spec="  args: [a]\n"))
    assert str(error) == "chat.yaml:5:1 spec: engine 'process' needs spec.command"


def test_bad_name_is_explained_as_dns_1123() -> None:
    error = only_error(workload_yaml(name="Web_1"))
    assert (error.position, error.field) == (Position(4, 3), "metadata.name")
    assert error.message.startswith("expected a DNS-1123 label: lower-case letters, digits and '-'")
    assert "Web_1" not in error.message
    assert error.key == ResourceKey("Workload", "Web_1")


def test_name_longer_than_63_characters_is_rejected() -> None:
    error = only_error(workload_yaml(name="a" * 64))
    assert error.field == "metadata.name"
    assert "at most 63 characters" in error.message


def test_unknown_kind_lists_the_known_kinds_and_has_no_key() -> None:
    error = only_error(workload_yaml().replace("kind: Workload", "kind: Deployment"))
    assert str(error) == "chat.yaml:2:1 kind: unknown kind: expected one of Model, Policy, Workload, got a string"
    assert error.key is None


def test_wrong_api_version_names_the_expected_one() -> None:
    text = workload_yaml().replace("localaistack.dev/v1alpha1", "localaistack.dev/v1")
    error = only_error(text)
    assert str(error) == "chat.yaml:1:1 apiVersion: expected 'localaistack.dev/v1alpha1', got a string"
    assert error.key == WEB


def test_missing_api_version_is_required() -> None:
    error = only_error(workload_yaml().replace("apiVersion: localaistack.dev/v1alpha1\n", ""))
    assert str(error) == "chat.yaml:1:1 apiVersion: required: expected 'localaistack.dev/v1alpha1'"


def test_api_version_error_is_at_its_own_line() -> None:
    text = "kind: Workload\napiVersion: v2\nmetadata:\n  name: web\nspec:\n  command: [x]\n"
    assert only_error(text).position == Position(2, 1)


@pytest.mark.parametrize(("text", "got"), [("- a\n- b\n", "a list"), ("just text\n", "a string"), ("42\n", "a number")])
def test_non_mapping_document_is_rejected(text: str, got: str) -> None:
    error = only_error(text)
    assert str(error) == f"chat.yaml:1:1: expected a mapping with apiVersion, kind, metadata and spec, got {got}"
    assert error.key is None



@pytest.mark.parametrize("kind", ["[Workload]", "{name: Workload}"])
def test_kind_that_is_not_a_string_is_an_error_not_a_crash(kind: str) -> None:
    error = only_error(workload_yaml().replace("kind: Workload", f"kind: {kind}"))
    assert (error.position, error.field) == (Position(2, 1), "kind")
    assert "unknown kind" in error.message

def test_every_error_of_a_document_is_reported() -> None:
    errors = errors_of(workload_yaml(name="Bad_Name", spec="  command: [python3]\n  workDir: /tmp\n  env:\n    OK: 5\n"))
    assert sorted(error.field for error in errors) == ["metadata.name", "spec.env.OK", "spec.workDir"]


def test_cross_field_rule_points_at_the_object() -> None:
    spec = "  command: [python3]\n  restart:\n    backoff:\n      initialSeconds: 10\n      maxSeconds: 5\n"
    error = only_error(workload_yaml(spec=spec))
    assert str(error).startswith("chat.yaml:8:5 spec.restart.backoff: maxSeconds must not be below initialSeconds")


def test_invalid_env_name_points_at_the_key() -> None:
    error = only_error(workload_yaml(spec="  command: [python3]\n  env:\n    1BAD: x\n"))
    assert (error.position, error.field) == (Position(8, 5), "spec.env.1BAD")


def test_a_valid_workload_loads_with_parsed_quantities() -> None:
    workload = valid(workload_yaml(spec="  command: [python3, -m, http.server]\n  resources:\n    memory: 8Gi\n"))
    assert workload.key == WEB
    assert workload.spec.command == ["python3", "-m", "http.server"]
    assert workload.spec.resources.memory == 8 * 2**30


# -- YAML reading: file-level problems ------------------------------------------------------------


def test_multi_document_errors_carry_the_second_documents_lines() -> None:
    text = workload_yaml() + "---\n" + workload_yaml(name="two", spec="  command: [python3]\n  bogus: 1\n")
    documents = parse_documents(text.encode())
    assert len(documents) == 2
    assert documents[1].start == Position(8, 1)
    first, second = (validate_document("chat.yaml", document) for document in documents)
    assert isinstance(first, Workload) and first.key == WEB
    assert isinstance(second, list)
    assert [str(error) for error in second] == ["chat.yaml:14:3 spec.bogus: unknown field 'bogus'"]


def test_multi_document_file_keeps_the_valid_document() -> None:
    text = workload_yaml() + "---\n" + workload_yaml(name="two", spec="  command: python3\n")
    desired = build_desired({"chat.yaml": text.encode()})
    assert list(desired.resources) == [WEB]
    assert [str(error) for error in desired.errors["chat.yaml"]] == [
        "chat.yaml:13:3 spec.command: expected a valid list, got a string"
    ]
    assert list(desired.rejected) == [ResourceKey("Workload", "two")]


def test_empty_documents_between_separators_are_skipped() -> None:
    documents = parse_documents(b"---\n---\na: 1\n---\n# only a comment\n")
    assert [(document.data, document.start) for document in documents] == [({"a": 1}, Position(3, 1))]


@pytest.mark.parametrize("data", [b"", b"   \n\n\t\n  "], ids=["empty", "whitespace"])
def test_empty_file_is_an_error(data: bytes) -> None:
    assert problem(data).message == "file is empty: expected at least one YAML document"


def test_file_of_only_comments_and_nulls_has_no_content() -> None:
    assert problem("# nothing here\n---\n~\n").message == "file holds no YAML document with content"


def test_invalid_yaml_syntax_has_a_position() -> None:
    found = problem("a: b: c\n")
    assert found.message == "invalid YAML: mapping values are not allowed here"
    assert found.position == Position(1, 5)


def test_unclosed_flow_sequence_points_where_it_ran_out() -> None:
    found = problem("a: [1, 2\n")
    assert found.message.startswith("invalid YAML: expected ',' or ']'")
    assert found.position == Position(2, 1)


def test_binary_garbage_names_the_byte_and_offset() -> None:
    found = problem(bytes(range(256)))
    assert found.message == "not UTF-8 text: byte 0x80 at offset 128"


def test_invalid_utf8_names_offset_and_line() -> None:
    found = problem(b"a: 1\nb: caf\xe9\n")
    assert found.message == "not UTF-8 text: byte 0xe9 at offset 11"
    assert found.position == Position(2, 1)


def test_invalid_utf8_after_a_bom_names_the_offset_in_the_file() -> None:
    found = problem(b"\xef\xbb\xbfa: 1\nb: caf\xe9\n")
    assert found.message == "not UTF-8 text: byte 0xe9 at offset 14"
    assert found.position == Position(2, 1)


def test_utf8_bom_is_accepted() -> None:
    (document,) = parse_documents(b"\xef\xbb\xbfa: 1\n")
    assert document.data == {"a": 1}


def test_nul_byte_is_binary_content() -> None:
    found = problem(b"a: 1\nb: x\x00y\n")
    assert found.message == "binary content: NUL byte in file"
    assert found.position == Position(2, 1)


def test_file_over_one_mebibyte_is_rejected() -> None:
    data = b"a: 1\n#" + b"x" * MAX_FILE_BYTES
    assert problem(data).message == f"file is larger than the limit of {MAX_FILE_BYTES} bytes (1 MiB)"


def test_file_of_exactly_one_mebibyte_is_accepted() -> None:
    data = b"a: 1\n#" + b"x" * (MAX_FILE_BYTES - 7) + b"\n"
    assert len(data) == MAX_FILE_BYTES
    assert [document.data for document in parse_documents(data)] == [{"a": 1}]


def test_alias_bomb_is_rejected_quickly() -> None:
    started = time.monotonic()
    found = problem(billion_laughs())
    assert time.monotonic() - started < 2.0
    assert "alias" in found.message
    assert found.position is not None


def test_small_aliases_are_expanded() -> None:
    (document,) = parse_documents(b"a: &shared [x, y]\nb: *shared\n")
    assert document.data == {"a": ["x", "y"], "b": ["x", "y"]}


def test_recursive_alias_is_rejected() -> None:
    found = problem("a: &loop [1, *loop]\n")
    assert found.message == "recursive alias: a value contains itself"
    assert found.position == Position(1, 4)


def test_duplicate_key_names_both_lines() -> None:
    found = problem("a: 1\nb: 2\na: 3\n")
    assert found.message == "duplicate key 'a' (first at line 1)"
    assert found.position == Position(3, 1)


def test_nested_duplicate_key_names_both_lines() -> None:
    found = problem(workload_yaml(spec="  command: [python3]\n  args: []\n  command: [node]\n"))
    assert found.message == "duplicate key 'command' (first at line 6)"
    assert found.position == Position(8, 3)


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("a: !!python/object:os.system {}\n", "!!python/object:os.system"),
        ("a: !!python/object/apply:os.system [echo hi]\n", "!!python/object/apply:os.system"),
        ("a: !!python/name:os.system ''\n", "!!python/name:os.system"),
        ("a: !!binary aGVsbG8=\n", "!!binary"),
        ("a: !!set {x}\n", "!!set"),
        ("a: !!omap [{x: 1}]\n", "!!omap"),
        ("a: !custom x\n", "!custom"),
    ],
)
def test_foreign_tags_are_rejected(text: str, tag: str) -> None:
    found = problem(text)
    assert found.message == f"YAML tag {tag} is not allowed"
    assert found.position == Position(1, 4)


def test_tag_on_the_document_root_is_rejected() -> None:
    found = problem("!!python/object:__main__.Evil {a: 1}\n")
    assert found.message == "YAML tag !!python/object:__main__.Evil is not allowed"


def test_standard_scalar_tags_are_allowed() -> None:
    (document,) = parse_documents(b"a: !!str 5\nb: !!int '7'\n")
    assert document.data == {"a": "5", "b": 7}



@pytest.mark.parametrize("text", ["a: !!int abc\n", "a: !!float abc\n", "a: !!bool maybe\n"])
def test_standard_tag_with_an_impossible_value_is_a_yaml_problem(text: str) -> None:
    assert problem(text).position == Position(1, 4)


def test_huge_integer_is_a_yaml_problem_not_a_crash() -> None:
    found = problem("a: " + "1" * 5000 + "\n")
    assert found.position == Position(1, 4)

def test_merge_keys_are_rejected() -> None:
    found = problem("base: &base {x: 1}\nmine:\n  <<: *base\n  y: 2\n")
    assert found.message == "YAML merge keys (<<) are not supported: write the fields out"
    assert found.position == Position(3, 3)


def test_complex_mapping_keys_are_rejected() -> None:
    found = problem("? [a, b]\n: 1\n")
    assert found.message == "mapping keys must be plain scalars"


def test_timestamps_stay_strings() -> None:
    (document,) = parse_documents(b"day: 2024-01-01\nat: 2024-01-01T10:00:00Z\n")
    assert document.data == {"day": "2024-01-01", "at": "2024-01-01T10:00:00Z"}


def test_a_date_is_a_valid_env_value() -> None:
    workload = valid(workload_yaml(spec="  command: [python3]\n  env:\n    SINCE: 2024-01-01\n"))
    assert workload.spec.env == {"SINCE": "2024-01-01"}


def test_nesting_up_to_the_limit_is_accepted() -> None:
    (document,) = parse_documents(("x: " + "[" * 63 + "]" * 63 + "\n").encode())
    value = document.data["x"]
    for _ in range(62):
        (value,) = value
    assert value == []


def test_nesting_past_the_limit_is_rejected() -> None:
    found = problem("x: " + "[" * 66 + "]" * 66 + "\n")
    assert found.message == "nested deeper than 64 levels"
    assert found.position is not None and found.position.line == 1


def test_extreme_nesting_is_an_error_not_a_crash() -> None:
    # libyaml composes it and the depth check refuses it; the pure loader runs out of recursion first
    assert problem("[" * 5000 + "]" * 5000).message in ("nested deeper than 64 levels", "invalid YAML: nested too deeply")


def test_positions_map_every_field_path() -> None:
    (document,) = parse_documents(workload_yaml(spec="  command: [python3, -m]\n").encode())
    assert document.position_of(("spec", "command", 1)) == Position(6, 22)
    assert document.position_of(("metadata", "name")) == Position(4, 3)
    assert document.position_of(("spec", "nothing", "here")) == Position(5, 1)  # nearest known parent
    assert document.position_of(("absent",)) == document.start


# -- the snapshot: build_desired -------------------------------------------------------------------


def test_valid_files_become_entries_with_their_file_and_spec_hash() -> None:
    desired = build_desired({"web.yaml": workload_yaml().encode(), "policy.yaml": policy_yaml().encode()})
    assert desired.files == ("policy.yaml", "web.yaml")
    assert set(desired.resources) == {WEB, ResourceKey("Policy", "workstation")}
    entry = desired.resources[WEB]
    assert entry.file == "web.yaml"
    assert entry.spec_hash == spec_hash(entry.resource)
    assert desired.errors == {} and desired.rejected == {}
    assert isinstance(desired.policy, Policy) and desired.policy.name == "workstation"


def test_duplicate_resource_across_files_rejects_both() -> None:
    desired = build_desired({"a.yaml": workload_yaml().encode(), "b.yaml": workload_yaml().encode()})
    assert WEB not in desired.resources
    assert WEB in desired.rejected and len(desired.rejected[WEB]) == 2
    for file in ("a.yaml", "b.yaml"):
        (error,) = desired.errors[file]
        assert error.file == file
        assert error.message == "Workload/web is defined more than once (a.yaml, b.yaml): none of them is applied"


def test_two_policies_are_both_rejected_naming_both_files() -> None:
    desired = build_desired({
        "a.yaml": policy_yaml("one").encode(),
        "b.yaml": policy_yaml("two").encode(),
        "web.yaml": workload_yaml().encode(),
    })
    one, two = ResourceKey("Policy", "one"), ResourceKey("Policy", "two")
    assert set(desired.resources) == {WEB}
    assert set(desired.rejected) == {one, two}
    assert desired.policy is None
    for file in ("a.yaml", "b.yaml"):
        (error,) = desired.errors[file]
        assert "only one Policy may govern a host" in error.message
        assert "Policy/one in a.yaml" in error.message and "Policy/two in b.yaml" in error.message


def test_identifiable_invalid_document_is_rejected_by_key() -> None:
    desired = build_desired({"web.yaml": workload_yaml(spec="  command: python3\n").encode()})
    assert desired.resources == {}
    assert [str(error) for error in desired.rejected[WEB]] == [
        "web.yaml:6:3 spec.command: expected a valid list, got a string"
    ]
    assert desired.errors["web.yaml"] == desired.rejected[WEB]


def test_unidentifiable_invalid_document_is_an_error_but_rejects_no_key() -> None:
    desired = build_desired({"x.yaml": b"- not\n- a mapping\n"})
    assert desired.rejected == {}
    assert len(desired.errors["x.yaml"]) == 1


def test_invalid_version_in_one_file_withholds_the_same_key_from_another() -> None:
    desired = build_desired({
        "a.yaml": workload_yaml().encode(),
        "b.yaml": workload_yaml(spec="  command: python3\n").encode(),
    })
    assert WEB not in desired.resources
    assert [error.file for error in desired.rejected[WEB]] == ["b.yaml"]


def test_unreadable_file_entry_becomes_that_files_error() -> None:
    unreadable = LoadError("secret.yaml", "cannot read file: Permission denied")
    desired = build_desired({"secret.yaml": unreadable, "web.yaml": workload_yaml().encode()})
    assert desired.errors == {"secret.yaml": [unreadable]}
    assert "secret.yaml" in desired.files
    assert desired.source_problem("secret.yaml") == unreadable
    assert desired.source_problem("web.yaml") is None
    assert list(desired.resources) == [WEB]


# -- where a resource's problem lies: source_problem and unattributed_error --------------------------


def test_source_problem_is_the_first_error_of_that_file() -> None:
    text = workload_yaml(name="two", spec="  command: [x]\n  zzz: 1\n") + "---\n" + workload_yaml(name="Bad_")
    desired = build_desired({"x.yaml": text.encode(), "web.yaml": workload_yaml().encode()})
    problem_ = desired.source_problem("x.yaml")
    assert problem_ is not None and problem_ == desired.errors["x.yaml"][0]
    assert problem_.position is not None and problem_.position.line == 7
    assert desired.source_problem("web.yaml") is None
    assert desired.source_problem("gone.yaml") is None


def test_source_problem_of_a_file_inside_an_unreadable_folder_is_the_folders_error() -> None:
    folder = LoadError("/srv/desired/apps", "cannot read folder: Permission denied")
    desired = build_desired({"apps/": folder, "web.yaml": workload_yaml().encode()})
    assert desired.source_problem("apps/chat.yaml") == folder
    assert desired.source_problem("apps/llm/chat.yaml") == folder
    assert desired.source_problem("web.yaml") is None


def test_source_problem_of_a_folder_does_not_reach_a_sibling_with_the_same_prefix() -> None:
    desired = build_desired({"apps/": LoadError("/srv/desired/apps", "cannot read folder: Permission denied")})
    assert desired.source_problem("apps-old/chat.yaml") is None
    assert desired.source_problem("apps.yaml") is None


def test_an_error_of_a_file_is_not_an_error_of_what_its_name_prefixes() -> None:
    desired = build_desired({"apps": LoadError("apps", "cannot read file: Permission denied")})
    assert desired.source_problem("apps/chat.yaml") is None


def test_source_problem_is_none_for_a_clean_snapshot() -> None:
    desired = build_desired({"web.yaml": workload_yaml().encode()})
    assert desired.source_problem("web.yaml") is None
    assert desired.unattributed_error() is None


def test_an_unidentifiable_document_is_an_unattributed_error() -> None:
    desired = build_desired({"web.yaml": workload_yaml().encode(), "x.yaml": b"- not\n- a mapping\n"})
    error = desired.unattributed_error()
    assert error is not None and error == desired.errors["x.yaml"][0]
    assert error.key is None


def test_an_error_that_names_its_resource_is_not_unattributed() -> None:
    desired = build_desired({"web.yaml": workload_yaml(spec="  command: python3\n").encode()})
    assert desired.errors["web.yaml"] and desired.errors["web.yaml"][0].key == WEB
    assert desired.unattributed_error() is None


def test_unattributed_error_looks_past_attributed_ones() -> None:
    desired = build_desired({
        "a.yaml": workload_yaml(spec="  command: python3\n").encode(),
        "b.yaml": b"a: 1\na: 2\n",
    })
    error = desired.unattributed_error()
    assert error is not None and error.message == "duplicate key 'a' (first at line 1)"


def test_unattributed_error_looks_past_attributed_ones_in_the_same_file() -> None:
    text = workload_yaml(spec="  command: python3\n") + "---\n- not a mapping\n"
    desired = build_desired({"a.yaml": text.encode()})
    first, second = desired.errors["a.yaml"]
    assert (first.key, second.key) == (WEB, None)
    assert desired.unattributed_error() == second


def test_an_unreadable_folder_is_an_unattributed_error() -> None:
    folder = LoadError("/srv/desired/apps", "cannot read folder: Permission denied")
    desired = build_desired({"apps/": folder})
    assert desired.unattributed_error() == folder
    assert desired.errors == {"apps/": [folder]}
    assert desired.resources == {} and desired.rejected == {}


# -- spec files that would share their outputs ------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "stem"),
    [("chat.yaml", "chat"), ("chat.yml", "chat"), ("apps/llm/chat.yaml", "apps/llm/chat"), ("v1.2.yaml", "v1.2")],
)
def test_output_stem(file: str, stem: str) -> None:
    assert output_stem(file) == stem


def test_yaml_and_yml_of_the_same_stem_are_both_errors_and_neither_loads() -> None:
    desired = build_desired({
        "a.yaml": workload_yaml().encode(),
        "a.yml": workload_yaml(name="other").encode(),
        "web.yaml": workload_yaml(name="web2").encode(),
    })
    assert set(desired.resources) == {ResourceKey("Workload", "web2")}
    for file in ("a.yaml", "a.yml"):
        (error,) = desired.errors[file]
        assert error.message == "a.yaml and a.yml would share a.status.yaml: rename one"
        assert error.file == file
        assert error.key is None
    assert desired.files == ("a.yaml", "a.yml", "web.yaml")
    assert desired.source_problem("a.yml") is not None
    assert desired.unattributed_error() is not None


def test_an_output_clash_is_reported_even_when_both_files_are_invalid() -> None:
    desired = build_desired({"a.yaml": b"a: 1\na: 2\n", "a.yml": b"- x\n"})
    for file in ("a.yaml", "a.yml"):
        assert [error.message for error in desired.errors[file]] == ["a.yaml and a.yml would share a.status.yaml: rename one"]


def test_an_output_clash_names_files_by_the_shown_root() -> None:
    desired = build_desired({"apps/a.yaml": b"a: 1\n", "apps/a.yml": b"a: 1\n"}, display_root="/srv/desired")
    (error,) = desired.errors["apps/a.yml"]
    assert error.file == "/srv/desired/apps/a.yml"
    assert error.message == "apps/a.yaml and apps/a.yml would share apps/a.status.yaml: rename one"


def test_the_same_name_in_different_folders_is_no_clash() -> None:
    desired = build_desired({"a.yaml": workload_yaml().encode(), "apps/a.yaml": workload_yaml(name="api").encode()})
    assert desired.errors == {}
    assert set(desired.resources) == {WEB, ResourceKey("Workload", "api")}


def test_an_unreadable_file_that_clashes_keeps_both_errors() -> None:
    unreadable = LoadError("a.yaml", "cannot read file: Permission denied")
    desired = build_desired({"a.yaml": unreadable, "a.yml": workload_yaml().encode()})
    assert unreadable in desired.errors["a.yaml"]
    assert len(desired.errors["a.yaml"]) == 2
    assert WEB not in desired.resources


def test_yaml_problem_becomes_a_positioned_file_error() -> None:
    desired = build_desired({"web.yaml": b"a: 1\na: 2\n"})
    assert [str(error) for error in desired.errors["web.yaml"]] == ["web.yaml:2:1: duplicate key 'a' (first at line 1)"]
    assert desired.resources == {} and desired.rejected == {}


def test_alias_bomb_in_a_file_is_that_files_error() -> None:
    desired = build_desired({"bomb.yaml": billion_laughs().encode(), "web.yaml": workload_yaml().encode()})
    (error,) = desired.errors["bomb.yaml"]
    assert "alias" in error.message
    assert list(desired.resources) == [WEB]


def test_file_errors_are_sorted_by_position() -> None:
    text = workload_yaml(name="two", spec="  command: [x]\n  zzz: 1\n") + "---\n" + workload_yaml(name="Bad_")
    desired = build_desired({"x.yaml": text.encode()})
    lines = [error.position.line for error in desired.errors["x.yaml"] if error.position]
    assert lines == sorted(lines) == [7, 12]


@pytest.mark.parametrize(
    ("name", "is_spec"),
    [
        ("chat.yaml", True),
        ("chat.yml", True),
        ("status.yaml", True),
        ("chat.status.yaml", False),
        ("chat.evidence.jsonl", False),
        (".chat.yaml", False),
        (".chat.yaml.swp", False),
        (".#chat.yaml", False),
        (".chat.status.yaml.k2j3.tmp", False),
        ("chat.yaml~", False),
        ("#chat.yaml#", False),
        ("4913", False),
        ("README.md", False),
        ("chat.json", False),
    ],
)
def test_is_spec_file(name: str, is_spec: bool) -> None:
    assert is_spec_file(name) is is_spec


def test_read_folder_reads_nested_specs_by_relative_name(tmp_path: Path) -> None:
    (tmp_path / "apps" / "llm").mkdir(parents=True)
    (tmp_path / "web.yaml").write_text("a: 1\n")
    (tmp_path / "apps" / "llm" / "chat.yml").write_text("b: 2\n")
    (tmp_path / "web.status.yaml").write_text("generated\n")
    (tmp_path / "web.evidence.jsonl").write_text("{}\n")
    (tmp_path / ".web.yaml.swp").write_text("x")
    (tmp_path / "README.md").write_text("x")
    assert read_folder(tmp_path) == {"web.yaml": b"a: 1\n", "apps/llm/chat.yml": b"b: 2\n"}


def test_read_folder_skips_hidden_directories(tmp_path: Path) -> None:
    for hidden in (".git", "apps/.cache"):
        (tmp_path / hidden).mkdir(parents=True)
        (tmp_path / hidden / "x.yaml").write_text("a: 1\n")
    (tmp_path / "apps" / "y.yaml").write_text("b: 1\n")
    assert set(read_folder(tmp_path)) == {"apps/y.yaml"}


def test_read_folder_turns_an_unreadable_file_into_its_error(tmp_path: Path) -> None:
    os.symlink(tmp_path / "missing-target", tmp_path / "dangling.yaml")
    contents = read_folder(tmp_path)
    error = contents["dangling.yaml"]
    assert isinstance(error, LoadError)
    assert error.file.endswith("dangling.yaml")
    assert error.message == "cannot read file: No such file or directory"
    assert load_desired(tmp_path).errors["dangling.yaml"] == [error]


def _refuse_to_list(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """Make os.scandir fail for `folders` as a folder without read permission would (root ignores chmod)."""
    real_scandir = os.scandir
    refused = {str(folder) for folder in folders}

    def scandir(path: object = ".") -> object:
        if os.fspath(path) in refused:  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))  # type: ignore[arg-type]
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)


def test_read_folder_records_an_unreadable_sub_folder_as_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "apps" / "llm").mkdir(parents=True)
    (tmp_path / "apps" / "llm" / "chat.yaml").write_text(workload_yaml(name="chat"))
    (tmp_path / "web.yaml").write_text(workload_yaml())
    _refuse_to_list(monkeypatch, tmp_path / "apps" / "llm")
    contents = read_folder(tmp_path)
    assert set(contents) == {"web.yaml", "apps/llm/"}
    error = contents["apps/llm/"]
    assert isinstance(error, LoadError)
    assert error == LoadError(str(tmp_path / "apps" / "llm"), "cannot read folder: Permission denied")


def test_an_unreadable_sub_folder_blocks_what_it_may_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "chat.yaml").write_text(workload_yaml(name="chat"))
    (tmp_path / "web.yaml").write_text(workload_yaml())
    _refuse_to_list(monkeypatch, tmp_path / "apps")
    desired = load_desired(tmp_path)
    assert list(desired.resources) == [WEB]
    assert desired.files == ("apps/", "web.yaml")
    folder_error = desired.errors["apps/"][0]
    assert str(folder_error) == f"{tmp_path / 'apps'}: cannot read folder: Permission denied"
    assert desired.source_problem("apps/chat.yaml") == folder_error
    assert desired.source_problem("web.yaml") is None
    assert desired.unattributed_error() == folder_error


def test_an_unreadable_root_is_an_error_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "web.yaml").write_text(workload_yaml())
    _refuse_to_list(monkeypatch, tmp_path)
    desired = load_desired(tmp_path)
    assert desired.resources == {}
    error = desired.unattributed_error()
    assert error is not None and error.message == "cannot read folder: Permission denied"


def test_read_folder_reads_just_past_the_size_limit(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_bytes(b"a: 1\n#" + b"x" * (2 * MAX_FILE_BYTES))
    assert len(read_folder(tmp_path)["big.yaml"]) == MAX_FILE_BYTES + 1
    desired = load_desired(tmp_path)
    (error,) = desired.errors["big.yaml"]
    assert "larger than the limit" in error.message


def test_load_desired_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(workload_yaml())
    (tmp_path / "policy.yaml").write_text(policy_yaml())
    desired = load_desired(tmp_path)
    assert set(desired.resources) == {WEB, ResourceKey("Policy", "workstation")}
    assert desired.errors == {}


# -- quantities ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("8Gi", 8 * 2**30),
        ("512Mi", 512 * 2**20),
        ("512M", 512 * 10**6),
        ("1.5G", 1_500_000_000),
        ("1.5Ki", 1536),
        ("8k", 8000),
        ("1Ei", 2**60),
        ("1024", 1024),
        (1024, 1024),
        (0, 0),
    ],
)
def test_parse_bytes(text: str | int, count: int) -> None:
    assert parse_bytes(text) == count


@pytest.mark.parametrize("value", ["lots", "8K", "8gi", "8 Gi", "", "-1", "1e9", -1, True, None, 1.5])
def test_parse_bytes_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="quantity like 8Gi"):
        parse_bytes(value)



@pytest.mark.parametrize("value", ["8Gi\n", "1024\n"])
def test_parse_bytes_rejects_a_trailing_newline(value: str) -> None:
    with pytest.raises(ValueError, match="quantity like 8Gi"):
        parse_bytes(value)


@pytest.mark.parametrize(("value", "rounded_up"), [("1.5", 2), ("0.5", 1), ("1.0001Ki", 1025)])
def test_fractional_bytes_are_rejected_or_rounded_up_never_truncated(value: str, rounded_up: int) -> None:
    try:
        count = parse_bytes(value)
    except ValueError:
        return
    assert count == rounded_up

@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0"), (1000, "1000"), (1536, "1536"), (1024, "1Ki"), (8 * 2**30, "8Gi"), (3 * 2**20, "3Mi"), (2**60, "1Ei"), (2048 * 2**30, "2Ti")],
)
def test_format_bytes_is_the_shortest_exact_binary_spelling(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize("count", [0, 1, 999, 1024, 1536, 8 * 2**30, 5 * 10**9, 2**62 + 2**10])
def test_format_then_parse_round_trips(count: int) -> None:
    assert parse_bytes(format_bytes(count)) == count


def test_two_workloads_on_one_port_are_both_rejected_naming_each_other() -> None:
    def listener(name: str, host: str, port: int) -> bytes:
        return (f"apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}}}\n"
                f"spec: {{command: [srv], host: '{host}', port: {port}}}\n").encode()

    desired = build_desired({"a.yaml": listener("a", "127.0.0.1", 8080), "b.yaml": listener("b", "0.0.0.0", 8080),
                             "c.yaml": listener("c", "127.0.0.2", 8081), "d.yaml": listener("d", "127.0.0.3", 8081)})
    assert set(desired.rejected) == {ResourceKey("Workload", "a"), ResourceKey("Workload", "b")}
    assert "also declared by Workload/b in b.yaml" in desired.errors["a.yaml"][0].message
    assert {ResourceKey("Workload", "c"), ResourceKey("Workload", "d")} <= set(desired.resources), "different addresses"
