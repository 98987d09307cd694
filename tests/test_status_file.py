"""Status files: written from parts dumped again only when they change, byte-identical to one dump of the whole.

Real files in tmp_path; the real YAML dumper as the oracle."""

from __future__ import annotations

from pathlib import Path

import yaml

from reconciler.api.status import ResourceStatus
from reconciler.record import recorder as recorder_module
from reconciler.record.recorder import STATUS, STATUS_HEADER, Recorder, sibling


def status(name: str, message: str = "", kind: str = "Workload") -> ResourceStatus:
    return ResourceStatus(kind=kind, name=name, generation=1, phase="Running", message=message)


def one_dump(recorder: Recorder, spec_file: str) -> str:
    body = recorder._written[sibling(spec_file, STATUS)][0]
    return STATUS_HEADER + yaml.dump(body, Dumper=recorder_module._Dumper, sort_keys=False, allow_unicode=True)


def test_a_status_file_is_one_dump_of_its_content_through_every_change(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, tmp_path / "state" / "host.evidence.jsonl")
    target = tmp_path / "apps.status.yaml"
    recorder.set_file_errors("apps.yaml", ["apps.yaml:3:1: an error"])
    recorder.flush({"apps.yaml"})
    assert target.read_text() == one_dump(recorder, "apps.yaml") and "resources: []" in target.read_text()
    for name in ("b", "a", "c"):
        recorder.set_status("apps.yaml", status(name, "long: 'quoted' é\u2028 " * 20))
    recorder.set_status("apps.yaml", status("a", kind="Model"))
    recorder.flush({"apps.yaml"})
    assert target.read_text() == one_dump(recorder, "apps.yaml")
    recorder.set_status("apps.yaml", status("b", "changed"))  # one resource changes: the others' text is reused
    recorder.set_file_errors("apps.yaml", [])
    recorder.revision = "main@sha1:" + "0" * 40
    recorder.flush({"apps.yaml"})
    assert target.read_text() == one_dump(recorder, "apps.yaml")
    report = yaml.safe_load(target.read_text())
    assert [(r["kind"], r["name"], r["message"][:7]) for r in report["resources"]] == [
        ("Model", "a", ""), ("Workload", "a", "long: '"), ("Workload", "b", "changed"), ("Workload", "c", "long: '")]
    assert report["revision"] == recorder.revision and report["errors"] == []


def test_a_flush_dumps_only_the_resources_that_changed(tmp_path: Path, monkeypatch) -> None:
    recorder = Recorder(tmp_path, tmp_path / "state" / "host.evidence.jsonl")
    for n in range(100):
        recorder.set_status("many.yaml", status(f"w{n}"))
    recorder.flush({"many.yaml"})
    dumped: list[object] = []
    real_dump = yaml.dump
    monkeypatch.setattr(recorder_module.yaml, "dump", lambda value, **options: dumped.append(value) or real_dump(value, **options))
    recorder.set_status("many.yaml", status("w7", "restarted"))
    recorder.flush({"many.yaml"})
    w7 = next(resource for resource in recorder._written["many.status.yaml"][0]["resources"] if resource["name"] == "w7")
    assert dumped == [[w7]]  # not the 99 others, nor the unchanged head
    assert (tmp_path / "many.status.yaml").read_text() == one_dump(recorder, "many.yaml")


def test_a_file_that_already_holds_what_a_new_recorder_would_write_is_left_as_it_is(tmp_path: Path) -> None:
    """A one-shot `apply` starts with no memory of what it wrote: a status file already saying the same is not
    replaced (no sync per file of a pass that changes nothing), while one that differs, in its bytes or its
    permissions, is replaced."""
    target = tmp_path / "apps.status.yaml"
    first = Recorder(tmp_path, tmp_path / "state" / "host.evidence.jsonl")
    first.set_status("apps.yaml", status("a", "running"))
    first.flush({"apps.yaml"})
    written = target.stat()

    def next_process(message: str) -> None:
        recorder = Recorder(tmp_path, tmp_path / "state" / "host.evidence.jsonl")
        recorder.set_status("apps.yaml", status("a", message))
        recorder.flush({"apps.yaml"})

    next_process("running")
    assert target.stat().st_ino == written.st_ino and target.stat().st_mtime_ns == written.st_mtime_ns
    target.chmod(0o600)
    next_process("running")
    assert target.stat().st_ino != written.st_ino and target.stat().st_mode & 0o777 == 0o644
    replaced = target.stat().st_ino
    next_process("restarted")
    assert target.stat().st_ino != replaced and "restarted" in target.read_text()
