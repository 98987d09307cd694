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


def flushed_recorder(tmp_path: Path, spec_file: str, count: int) -> Recorder:
    """A recorder that has written `count` statuses of one spec file."""
    recorder = Recorder(tmp_path, tmp_path / "state" / "host.evidence.jsonl")
    for n in range(count):
        recorder.set_status(spec_file, status(f"w{n}"))
    recorder.flush({spec_file})
    return recorder


def test_a_flush_dumps_only_the_resources_that_changed(tmp_path: Path, monkeypatch) -> None:
    recorder = flushed_recorder(tmp_path, "many.yaml", 100)
    dumped: list[object] = []
    real_dump = yaml.dump
    monkeypatch.setattr(recorder_module.yaml, "dump", lambda value, **options: dumped.append(value) or real_dump(value, **options))
    recorder.set_status("many.yaml", status("w7", "restarted"))
    recorder.flush({"many.yaml"})
    w7 = next(resource for resource in recorder._written["many.status.yaml"][0]["resources"] if resource["name"] == "w7")
    assert dumped == [[w7]]  # not the 99 others, nor the unchanged head
    assert (tmp_path / "many.status.yaml").read_text() == one_dump(recorder, "many.yaml")


def test_a_flush_turns_into_data_only_the_statuses_set_since_the_last(tmp_path: Path, monkeypatch) -> None:
    recorder = flushed_recorder(tmp_path, "ten.yaml", 10)
    seen: list[str] = []
    real_dump = ResourceStatus.model_dump
    monkeypatch.setattr(ResourceStatus, "model_dump", lambda self, **options: seen.append(self.name) or real_dump(self, **options))
    recorder.set_status("ten.yaml", status("w3", "restarted"))  # each reconcile sets its own and flushes the file
    recorder.flush({"ten.yaml"})
    assert seen == ["w3"]
    assert yaml.safe_load((tmp_path / "ten.status.yaml").read_text())["resources"][3]["message"] == "restarted"
    recorder.set_status("ten.yaml", status("w3", "restarted"))  # an equal status, a new one (each resync's): kept
    recorder.flush({"ten.yaml"})
    assert seen == ["w3"] and (tmp_path / "ten.status.yaml").read_text() == one_dump(recorder, "ten.yaml")
    recorder.set_status("ten.yaml", status("w3", "restarted again"))
    recorder.flush({"ten.yaml"})
    assert seen == ["w3", "w3"]
    assert yaml.safe_load((tmp_path / "ten.status.yaml").read_text())["resources"][3]["message"] == "restarted again"


def test_a_new_recorder_leaves_a_file_that_already_holds_what_it_would_write(tmp_path: Path) -> None:
    """A restarted daemon's first pass, and every `apply`, rewrote and synced each status file unchanged."""
    def flushed() -> Path:
        flushed_recorder(tmp_path, "apps.yaml", 3)  # a new process's
        return tmp_path / "apps.status.yaml"
    target = flushed()
    written = target.read_text()
    inode = target.stat().st_ino
    assert flushed().stat().st_ino == inode  # read, found the same: not replaced
    target.chmod(0o600)  # the same bytes, not the same file: replaced
    assert flushed().stat().st_mode & 0o777 == 0o644 and target.stat().st_ino != inode
    target.write_text(written.replace("name: w1", "name: w9"))  # an edit of the same size: undone
    assert flushed().read_text() == written
