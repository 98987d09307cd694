from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from reconciler.record.atomic import write_atomic


def test_replaces_content_and_leaves_only_the_target(tmp_path: Path) -> None:
    target = tmp_path / "w.status.yaml"
    target.write_text("old\n")

    write_atomic(target, b"new\n")

    assert target.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.status.yaml"]


def test_str_is_written_as_utf8(tmp_path: Path) -> None:
    target = tmp_path / "note.txt"
    write_atomic(target, "grüße ✓")
    assert target.read_bytes() == "grüße ✓".encode()


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_mode_is_applied_exactly(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    target.chmod(0o666)

    write_atomic(target, "y", mode=mode)

    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_creates_missing_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "f.yaml"
    write_atomic(target, "k: v\n")
    assert target.read_text() == "k: v\n"


def test_temp_file_sits_beside_target_with_a_dotted_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "w.status.yaml"
    sources: list[Path] = []
    real_replace = os.replace

    def spy(src: str, dst: Path) -> None:
        sources.append(Path(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_atomic(target, "x")

    (temp,) = sources
    assert temp.parent == tmp_path
    assert temp.name.startswith(".w.status.yaml")
    assert temp.name.endswith(".tmp")


@pytest.mark.parametrize("failing", ["fsync", "replace", "fchmod"])
def test_failure_keeps_old_content_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "w.status.yaml"
    target.write_bytes(b"old content\n")

    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(OSError) as raised:
        write_atomic(target, b"new content that never lands\n")

    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.status.yaml"]


def test_interrupt_during_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"

    def interrupted(_fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"x")

    assert list(tmp_path.iterdir()) == []
