from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from reconciler.base.atomic import (
    UnsafeFile, open_regular, read_regular, remove_regular, rename_regular, write_atomic,
)


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

    def spy(src: str, dst: str, **dir_fds: int) -> None:
        sources.append(Path(src))
        real_replace(src, dst, **dir_fds)

    monkeypatch.setattr(os, "replace", spy)
    write_atomic(target, "x")

    (temp,) = sources
    assert temp.parent == Path(".")  # named relative to the target's folder, opened once
    assert temp.name.startswith(".w.status.yaml")
    assert temp.name.endswith(".tmp")


@pytest.mark.parametrize("failing", ["fsync", "replace", "fchmod"])
def test_failure_keeps_old_content_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "w.status.yaml"
    target.write_bytes(b"old content\n")

    def disk_full(*_args: object, **_dir_fds: int) -> None:
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


# -- hostile names: the folder is written by others, the reconciler may be root ---------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the folder, its last line unterminated: what a write through a link would cut or append to."""
    path = tmp_path / "victim"
    path.write_bytes(b"precious first line\nprecious last line, no newline")
    return path


def test_a_link_in_place_of_the_target_is_refused_kept_and_never_written_through(tmp_path: Path, victim: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    target = folder / "web.status.yaml"
    target.symlink_to(victim)

    with pytest.raises(UnsafeFile, match="web.status.yaml is a symbolic link, not a regular file: refused"):
        write_atomic(target, "phase: Running\n", root=folder)

    assert victim.read_bytes() == b"precious first line\nprecious last line, no newline"
    assert target.is_symlink() and [p.name for p in folder.iterdir()] == ["web.status.yaml"]  # no temp left


@pytest.mark.parametrize("flags", [os.O_WRONLY | os.O_APPEND | os.O_CREAT, os.O_RDONLY, os.O_RDWR | os.O_CREAT])
def test_opening_refuses_a_link_whatever_the_flags(tmp_path: Path, victim: Path, flags: int) -> None:
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        open_regular(tmp_path / "lock", flags)
    assert victim.read_bytes().endswith(b"no newline")


def test_a_fifo_is_refused_without_blocking_whether_written_read_or_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "web.evidence.jsonl"
    os.mkfifo(fifo)
    outcomes: list[str] = []

    def attempts() -> None:  # on a thread: a blocking open would hang here, not the test run
        for attempt in (lambda: open_regular(fifo, os.O_WRONLY | os.O_APPEND | os.O_CREAT), lambda: read_regular(fifo),
                        lambda: write_atomic(fifo, "x"), lambda: remove_regular(fifo)):
            try:
                attempt()
                outcomes.append("written")
            except UnsafeFile as refused:
                outcomes.append(str(refused))

    worker = threading.Thread(target=attempts, daemon=True)
    worker.start()
    worker.join(timeout=10)

    assert not worker.is_alive(), "opening a FIFO blocked"
    assert len(outcomes) == 4 and all("FIFO" in outcome and "refused" in outcome for outcome in outcomes), outcomes
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # never removed


def test_a_parent_folder_swapped_for_a_link_is_refused_under_root(tmp_path: Path) -> None:
    folder, outside = tmp_path / "desired", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "team").symlink_to(outside)

    with pytest.raises(UnsafeFile, match="team is a symbolic link or a file, not a folder"):
        write_atomic(folder / "team" / "web.status.yaml", "x", root=folder)
    with pytest.raises(UnsafeFile):
        open_regular(folder / "team" / "web.evidence.jsonl", os.O_WRONLY | os.O_CREAT, root=folder)

    assert list(outside.iterdir()) == []


def test_the_root_itself_may_be_a_link(tmp_path: Path) -> None:
    """A GitOps root is a link that each revision replaces: only what lies below it is never followed."""
    (tmp_path / "revision").mkdir()
    (tmp_path / "current").symlink_to(tmp_path / "revision")
    write_atomic(tmp_path / "current" / "web.status.yaml", "x", root=tmp_path / "current")
    assert (tmp_path / "revision" / "web.status.yaml").read_text() == "x"


def test_a_removed_folder_under_root_is_not_brought_back(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "gone" / "web.status.yaml", "x", root=tmp_path)
    remove_regular(tmp_path / "gone" / "web.status.yaml", root=tmp_path)  # nothing there: nothing to do
    assert list(tmp_path.iterdir()) == []


def test_rename_refuses_a_link_on_either_side(tmp_path: Path, victim: Path) -> None:
    live, rotated = tmp_path / "a.evidence.jsonl", tmp_path / "a.evidence.jsonl.1"
    live.write_text("line\n")
    rotated.symlink_to(victim)
    with pytest.raises(UnsafeFile):
        rename_regular(live, rotated)
    assert rotated.is_symlink() and live.read_text() == "line\n"


def test_appending_refuses_a_hard_link_to_a_file_elsewhere(tmp_path: Path, victim: Path) -> None:
    """O_NOFOLLOW does not see a hard link: the link count does (the kernel may let one be made to a file one cannot write)."""
    (tmp_path / "desired").mkdir()
    os.link(victim, tmp_path / "desired" / "web.evidence.jsonl")
    with pytest.raises(UnsafeFile, match="a hard link \\(2 names\\), not a file of its own"):
        open_regular(tmp_path / "desired" / "web.evidence.jsonl", os.O_WRONLY | os.O_APPEND, root=tmp_path / "desired")
    assert victim.read_bytes().endswith(b"no newline")


def test_every_safe_open_names_a_file_that_is_not_regular_the_same_way(tmp_path: Path) -> None:
    """State writes, model reads and spec reads keep their own policies on links, but a FIFO or a socket where a
    file was expected is called the same in each of their refusals."""
    import socket

    from reconciler.base.file_types import file_type
    from reconciler.load.spec_file import SpecRefused, read_spec_file
    from reconciler.observe.host import NotRegularFile
    from reconciler.observe.host import open_regular as open_model

    os.mkfifo(tmp_path / "pipe")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock"))
    try:
        for name, expected in (("pipe", "a FIFO"), ("sock", "a socket")):
            path = tmp_path / name
            assert file_type(os.lstat(path).st_mode) == expected
            with pytest.raises(UnsafeFile) as state_write:
                write_atomic(path, "x")
            with pytest.raises(SpecRefused) as spec_read:
                read_spec_file(path, str(tmp_path), 100)
            assert f"{path} is {expected}, not a regular file" in str(state_write.value)
            assert f"it is {expected}, not a regular file" in str(spec_read.value)
        with pytest.raises(NotRegularFile, match="pipe is a FIFO, not a regular file"):
            open_model(tmp_path / "pipe")  # a socket is refused by its open itself (ENXIO), before any fstat
    finally:
        listening.close()
