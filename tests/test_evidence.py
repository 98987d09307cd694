from __future__ import annotations

import hashlib
import itertools
import json
import errno
import os
import threading
from pathlib import Path
from typing import BinaryIO, Self

import pytest

from reconciler.base.atomic import UnsafeFile
from reconciler.record import evidence
from reconciler.record.evidence import GENESIS, EvidenceLog, verify_chain


def sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def chain_files(path: Path) -> list[Path]:
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, path]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "w.evidence.jsonl"


def test_first_line_chains_to_zeros_and_each_next_to_the_line_before(log_path: Path) -> None:
    log = EvidenceLog(log_path)
    returned = [log.append({"event": "apply", "n": n}) for n in range(3)]

    written = lines(log_path)
    assert [json.loads(line) for line in written] == returned
    assert returned[0]["prev"] == GENESIS
    assert returned[1]["prev"] == sha(written[0])
    assert returned[2]["prev"] == sha(written[1])
    assert returned[0] == {"event": "apply", "n": 0, "prev": GENESIS}


def test_lines_are_compact_sorted_utf8_json(log_path: Path) -> None:
    EvidenceLog(log_path).append({"z": 1, "a": "grüße"})
    assert log_path.read_bytes() == ('{"a":"grüße","prev":"' + GENESIS + '","z":1}\n').encode()


def test_new_instance_continues_the_chain(log_path: Path) -> None:
    EvidenceLog(log_path).append({"n": 1})
    EvidenceLog(log_path).append({"n": 2})
    third = EvidenceLog(log_path).append({"n": 3})

    written = lines(log_path)
    assert third["prev"] == sha(written[1])
    assert json.loads(written[1])["prev"] == sha(written[0])
    assert verify_chain(log_path).ok


def test_file_mode(log_path: Path) -> None:
    old = os.umask(0)
    try:
        EvidenceLog(log_path).append({"n": 1})
    finally:
        os.umask(old)
    assert log_path.stat().st_mode & 0o777 == 0o644


def test_reserved_fields_are_refused(log_path: Path) -> None:
    log = EvidenceLog(log_path)
    with pytest.raises(ValueError, match="prev"):
        log.append({"prev": "forged"})
    with pytest.raises(ValueError, match="repaired"):
        log.append({"repaired": 3})
    assert not log_path.exists()


def test_rotation_keeps_chain_continuous_and_at_most_keep_files(log_path: Path) -> None:
    log = EvidenceLog(log_path, max_bytes=400, keep=2)
    for n in range(40):
        log.append({"event": "tick", "n": n})

    rotated = sorted(p.name for p in log_path.parent.glob(log_path.name + ".*"))
    assert rotated == [log_path.name + ".1", log_path.name + ".2"]
    all_lines = [line for file in chain_files(log_path) for line in lines(file)]
    for before, line in itertools.pairwise(all_lines):
        assert json.loads(line)["prev"] == sha(before)
    assert [json.loads(line)["n"] for line in all_lines] == list(range(40 - len(all_lines), 40))
    assert all(file.stat().st_size <= 400 for file in chain_files(log_path))
    result = verify_chain(log_path)
    assert result.ok and result.records == len(all_lines)


def test_oversized_line_goes_into_an_empty_file_without_rotating_it_away(log_path: Path) -> None:
    log = EvidenceLog(log_path, max_bytes=50)
    log.append({"blob": "x" * 100})
    log.append({"blob": "y" * 100})
    assert len(lines(log_path)) == 1
    assert len(lines(log_path.with_name(log_path.name + ".1"))) == 1
    log_path.unlink()  # as if the daemon died right after rotating

    EvidenceLog(log_path, max_bytes=50).append({"blob": "z" * 100})

    assert not log_path.with_name(log_path.name + ".2").exists()
    assert verify_chain(log_path) == evidence.VerifyResult(ok=True, records=2)


def test_reopened_log_chains_to_rotated_file_when_live_file_is_missing(log_path: Path) -> None:
    EvidenceLog(log_path).append({"n": 1})
    rotated = log_path.with_name(log_path.name + ".1")
    log_path.rename(rotated)  # as if the daemon died right after rotating

    record = EvidenceLog(log_path).append({"n": 2})

    assert record["prev"] == sha(lines(rotated)[0])
    assert verify_chain(log_path).ok


def test_verify_passes_on_intact_chain(log_path: Path) -> None:
    log = EvidenceLog(log_path)
    for n in range(5):
        log.append({"n": n})
    assert verify_chain(log_path) == evidence.VerifyResult(ok=True, records=5)


def test_verify_on_missing_log_is_an_empty_ok_chain(log_path: Path) -> None:
    assert verify_chain(log_path) == evidence.VerifyResult(ok=True, records=0)


def test_verify_names_the_line_after_an_edited_one(log_path: Path) -> None:
    log = EvidenceLog(log_path)
    for n in range(5):
        log.append({"n": n, "outcome": "ok"})
    written = lines(log_path)
    written[2] = written[2].replace(b'"outcome":"ok"', b'"outcome":"no"')
    log_path.write_bytes(b"\n".join(written) + b"\n")

    result = verify_chain(log_path)

    assert not result.ok
    assert (result.broken_file, result.broken_line, result.records) == (log_path, 4, 3)
    assert result.reason is not None and "prev" in result.reason


def test_verify_names_a_non_json_line(log_path: Path) -> None:
    log = EvidenceLog(log_path)
    for n in range(5):
        log.append({"n": n})
    written = lines(log_path)
    written[2] = b"not json at all"
    log_path.write_bytes(b"\n".join(written) + b"\n")

    result = verify_chain(log_path)

    assert (result.ok, result.broken_file, result.broken_line) == (False, log_path, 3)
    assert result.reason is not None and "JSON" in result.reason


def test_verify_names_the_rotated_file_holding_a_deleted_line(log_path: Path) -> None:
    log = EvidenceLog(log_path, max_bytes=300, keep=3)
    for n in range(30):
        log.append({"n": n})
    oldest = chain_files(log_path)[0]
    assert oldest.name == log_path.name + ".3"
    written = lines(oldest)
    del written[1]
    oldest.write_bytes(b"\n".join(written) + b"\n")

    result = verify_chain(log_path)

    assert (result.ok, result.broken_file, result.broken_line) == (False, oldest, 2)


def test_oldest_retained_line_may_chain_to_a_dropped_file(log_path: Path) -> None:
    log = EvidenceLog(log_path, max_bytes=200, keep=1)
    for n in range(20):
        log.append({"n": n})
    first = json.loads(lines(chain_files(log_path)[0])[0])
    assert first["prev"] != GENESIS
    assert verify_chain(log_path).ok


def test_torn_tail_is_cut_and_reported_on_next_append(log_path: Path) -> None:
    log = EvidenceLog(log_path)
    log.append({"n": 1})
    log.append({"n": 2})
    complete = lines(log_path)
    with open(log_path, "ab") as f:
        f.write(b'{"n":3,"prev":"ab')  # the crash hit mid-write
    assert not verify_chain(log_path).ok

    record = EvidenceLog(log_path).append({"n": 4})

    assert record["repaired"] == len(b'{"n":3,"prev":"ab')
    assert record["prev"] == sha(complete[1])
    assert lines(log_path)[:2] == complete
    assert json.loads(lines(log_path)[2]) == record
    assert verify_chain(log_path) == evidence.VerifyResult(ok=True, records=3)


def test_file_holding_only_a_torn_line_starts_the_chain_afresh(log_path: Path) -> None:
    log_path.write_bytes(b'{"n":1,"pr')
    record = EvidenceLog(log_path).append({"n": 2})
    assert record == {"n": 2, "prev": GENESIS, "repaired": 10}
    assert verify_chain(log_path).ok


def test_unserializable_record_leaves_torn_tail_for_the_next_append_to_report(log_path: Path) -> None:
    EvidenceLog(log_path).append({"n": 1})
    with open(log_path, "ab") as f:
        f.write(b"{")
    log = EvidenceLog(log_path)
    with pytest.raises(TypeError):
        log.append({"bad": object()})
    assert log_path.read_bytes().endswith(b"{")
    assert log.append({"n": 2})["repaired"] == 1


def test_invalid_last_line_is_still_chained_to(log_path: Path) -> None:
    EvidenceLog(log_path).append({"n": 1})
    with open(log_path, "ab") as f:
        f.write(b"tampered\n")

    record = EvidenceLog(log_path).append({"n": 2})

    assert record["prev"] == sha(b"tampered")
    assert "repaired" not in record
    assert verify_chain(log_path).broken_line == 2


def test_tail_read_on_a_file_larger_than_the_window(log_path: Path) -> None:
    log = EvidenceLog(log_path, max_bytes=10**9)
    for n in range(2000):
        log.append({"event": "reconcile", "n": n, "detail": "padding " * 4})
    assert log_path.stat().st_size > 2 * evidence._TAIL_WINDOW

    record = EvidenceLog(log_path, max_bytes=10**9).append({"n": 2000})

    assert record["prev"] == sha(lines(log_path)[1999])
    assert verify_chain(log_path) == evidence.VerifyResult(ok=True, records=2001)


def test_reopening_reads_only_the_tail(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = EvidenceLog(log_path, max_bytes=10**9)
    for n in range(2000):
        log.append({"event": "reconcile", "n": n, "detail": "padding " * 4})
    read_sizes: list[int] = []
    real_reader = evidence._reader

    class CountingFile:
        def __init__(self, path: Path, root: Path | None = None) -> None:
            self._file: BinaryIO = real_reader(path, root)

        def __enter__(self) -> Self:
            return self

        def __exit__(self, *_exc: object) -> None:
            self._file.close()

        def seek(self, *args: int) -> int:
            return self._file.seek(*args)

        def read(self, size: int) -> bytes:
            data = self._file.read(size)
            read_sizes.append(len(data))
            return data

    monkeypatch.setattr(evidence, "_reader", CountingFile)
    EvidenceLog(log_path, max_bytes=10**9).append({"n": 2000})

    assert 0 < sum(read_sizes) <= evidence._TAIL_WINDOW < log_path.stat().st_size // 2


def test_tail_read_of_a_last_line_longer_than_the_window(log_path: Path) -> None:
    log = EvidenceLog(log_path, max_bytes=10**9)
    log.append({"n": 0})
    log.append({"blob": "z" * (3 * evidence._TAIL_WINDOW)})
    with open(log_path, "ab") as f:
        f.write(b"t" * (2 * evidence._TAIL_WINDOW))

    record = EvidenceLog(log_path, max_bytes=10**9).append({"n": 2})

    assert record["prev"] == sha(lines(log_path)[1])
    assert record["repaired"] == 2 * evidence._TAIL_WINDOW
    assert verify_chain(log_path).ok


def test_failed_fsync_is_followed_by_a_chain_that_includes_the_written_line(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EvidenceLog(log_path)
    log.append({"n": 1})

    def failing(_fd: int) -> None:
        raise OSError("I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", failing)
        with pytest.raises(OSError):
            log.append({"n": 2})
    record = log.append({"n": 3})

    assert record["prev"] == sha(lines(log_path)[1])
    assert verify_chain(log_path).ok


def test_short_write_is_repaired_by_the_next_append(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EvidenceLog(log_path)
    log.append({"n": 1})
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        return real_write(fd, data[:7])

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk_full)
        with pytest.raises(OSError) as short:
            log.append({"n": 2})
    assert short.value.errno == errno.ENOSPC and short.value.filename == str(log_path)  # said as the kernel would
    record = log.append({"n": 3})

    assert record["repaired"] == 7
    assert record["prev"] == sha(lines(log_path)[0])
    assert verify_chain(log_path) == evidence.VerifyResult(ok=True, records=2)


def test_concurrent_appends_keep_one_chain(log_path: Path) -> None:
    log = EvidenceLog(log_path, max_bytes=4096, keep=50)

    def worker(t: int) -> None:
        for n in range(50):
            log.append({"thread": t, "n": n})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert verify_chain(log_path) == evidence.VerifyResult(ok=True, records=400)


# -- planted names: the log lies in a folder others write ----------------------------------------------------------

UNTERMINATED = b"someone else's first line\nsomeone else's last line, no newline"


def test_a_live_file_planted_as_a_link_is_never_cut_or_appended_to(tmp_path: Path) -> None:
    """Without the check the 'torn' unterminated last line of the link's target was cut and lines appended."""
    victim, folder = tmp_path / "victim", tmp_path / "desired"
    victim.write_bytes(UNTERMINATED)
    folder.mkdir()
    (folder / "w.evidence.jsonl").symlink_to(victim)

    with pytest.raises(UnsafeFile, match="w.evidence.jsonl is a symbolic link"):
        EvidenceLog(folder / "w.evidence.jsonl", root=folder).append({"event": "decision"})

    assert victim.read_bytes() == UNTERMINATED and (folder / "w.evidence.jsonl").is_symlink()


def test_a_rotated_file_planted_as_a_link_stops_the_rotation_before_anything_moves(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(UNTERMINATED)
    log = EvidenceLog(tmp_path / "w.evidence.jsonl", max_bytes=200, root=tmp_path)
    log.append({"n": 0, "pad": "x" * 120})
    (tmp_path / "w.evidence.jsonl.1").symlink_to(victim)

    with pytest.raises(UnsafeFile):
        log.append({"n": 1, "pad": "x" * 120})

    assert victim.read_bytes() == UNTERMINATED and (tmp_path / "w.evidence.jsonl.1").is_symlink()
    assert len(lines(tmp_path / "w.evidence.jsonl")) == 1


def test_a_fifo_in_place_of_the_log_is_refused_without_blocking(log_path: Path) -> None:
    os.mkfifo(log_path)
    outcome: list[BaseException | None] = []

    def append() -> None:
        try:
            EvidenceLog(log_path).append({"n": 1})
            outcome.append(None)
        except UnsafeFile as refused:
            outcome.append(refused)

    worker = threading.Thread(target=append, daemon=True)
    worker.start()
    worker.join(timeout=10)

    assert not worker.is_alive(), "appending blocked on the FIFO"
    assert isinstance(outcome[0], UnsafeFile) and "is a FIFO" in str(outcome[0])


def test_verify_names_a_chain_file_that_is_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text(json.dumps({"prev": GENESIS}) + "\n")
    (tmp_path / "w.evidence.jsonl").symlink_to(victim)

    result = verify_chain(tmp_path / "w.evidence.jsonl")

    assert not result.ok and result.broken_file == tmp_path / "w.evidence.jsonl" and "symbolic link" in str(result.reason)


def test_two_processes_appending_to_one_chain_keep_it_one_chain(log_path: Path) -> None:
    """The gateway records hosted requests in a workload's log while the daemon records its passes there: without a
    lock across processes each writer chained to the line it last wrote itself, and the chain forked."""
    import subprocess
    import sys

    writer = ("import sys\nfrom pathlib import Path\nfrom reconciler.record.evidence import EvidenceLog\n"
              "log = EvidenceLog(Path(sys.argv[1]), max_bytes=8192, keep=100)\n"
              "for n in range(150):\n    log.append({'writer': sys.argv[2], 'n': n})\n")
    writers = [subprocess.Popen([sys.executable, "-c", writer, str(log_path), name]) for name in ("daemon", "gateway")]
    assert [process.wait(timeout=120) for process in writers] == [0, 0]

    assert verify_chain(log_path) == evidence.VerifyResult(ok=True, records=300)


def test_the_last_line_about_a_resource_is_found_across_windows_and_a_rotation_but_not_in_a_torn_tail(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a restart reads to find a decision left without its outcome: the newest whole line about the resource,
    with its hash as the next line's prev would carry it."""
    monkeypatch.setattr(evidence, "_TAIL_WINDOW", 64)  # lines longer than a window, windows holding several lines
    log = EvidenceLog(log_path, max_bytes=600)
    for n in range(12):
        log.append({"resource": "Workload/a" if n == 2 else "Workload/b", "n": n, "pad": "x" * (n * 7)})
    assert log_path.with_name(log_path.name + ".1").exists(), "line 2 now lies in a rotated file"
    about_a = lambda record: record.get("resource") == "Workload/a"  # noqa: E731
    found, digest = evidence.last_record_about(log_path, about_a)
    assert found["n"] == 2
    rotated = [raw for file in evidence.chain_files(log_path) for raw in lines(file)]
    assert digest == sha(next(raw for raw in rotated if b'"n":2,' in raw))
    with log_path.open("ab") as torn:  # a crash mid-append: not a record
        torn.write(b'{"resource":"Workload/a","n":99')
    assert evidence.last_record_about(log_path, about_a)[0]["n"] == 2
    monkeypatch.setattr(evidence, "_LOOK_BACK", 400)  # a bounded look: an old line is not looked for forever
    assert evidence.last_record_about(log_path, about_a) is None
    assert evidence.last_record_about(log_path, lambda record: record.get("n") == 11)[0]["n"] == 11


@pytest.mark.parametrize("unsafe", ["symlink", "fifo", "folder"])
def test_a_live_file_that_is_no_regular_file_hides_nothing_older_as_the_newest_line(tmp_path: Path, unsafe: str) -> None:
    """The newest evidence is unknown when the live file is a link, a FIFO or a folder: the rotated file's decision
    is not the newest line about the resource (its outcome may be in the live file), so none is returned."""
    log_path = tmp_path / "a.evidence.jsonl"
    log = EvidenceLog(log_path, max_bytes=300, root=tmp_path)
    log.append({"resource": "Workload/a", "event": "decision", "pad": "x" * 200})
    log.append({"resource": "Workload/a", "event": "action", "pad": "y" * 200})  # rotates: the decision is in .1
    assert log_path.with_name(log_path.name + ".1").exists()
    moved = tmp_path / "elsewhere.jsonl"
    log_path.rename(moved)
    if unsafe == "symlink":
        log_path.symlink_to(moved)
    elif unsafe == "fifo":
        os.mkfifo(log_path)
    else:
        log_path.mkdir()
    about_a = lambda record: record.get("resource") == "Workload/a"  # noqa: E731
    assert evidence.last_record_about(log_path, about_a, root=tmp_path) is None
    log_path.unlink() if unsafe != "folder" else log_path.rmdir()
    assert evidence.last_record_about(log_path, about_a, root=tmp_path)[0]["event"] == "decision"  # gone: look back


def test_the_look_back_reads_at_most_keep_rotated_files_and_parses_only_lines_that_mention_the_resource(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run on every start for every workload: rotated files planted past `keep` are never opened, and a line about
    another resource is skipped by its bytes, not parsed."""
    for n in range(1, 6):
        log_path.with_name(f"{log_path.name}.{n}").write_text(
            json.dumps({"resource": "Workload/a" if n == 5 else "Workload/b", "n": n}, separators=(",", ":")) + "\n")
    about_a = lambda record: record.get("resource") == "Workload/a"  # noqa: E731
    assert evidence.last_record_about(log_path, about_a, keep=5)[0]["n"] == 5
    assert evidence.last_record_about(log_path, about_a, keep=3) is None
    parsed: list[bytes] = []
    monkeypatch.setattr(evidence, "_parse", lambda raw: parsed.append(raw) or json.loads(raw))
    assert evidence.last_record_about(log_path, about_a, mentions=b'"resource":"Workload/a"', keep=5)[0]["n"] == 5
    assert len(parsed) == 1, parsed
