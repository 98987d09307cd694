"""Model artifacts against a real loopback HTTP server and real files: cache, resume, verification, disk."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.drive.artifacts import (
    NET_CHUNK, ArtifactCache, InsufficientDisk, InvalidArtifact, SourceUnreachable, fetch, verify_file,
)
from tests.artifact_server import ArtifactServer
from tests.tiny_gguf import write_tiny_llama

SIZE = 300_000
CUT = 2 * NET_CHUNK  # a cut inside a network read loses that read's bytes; at its edge, none
PAYLOAD = random.Random(7).randbytes(SIZE)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "models")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_partials(cache: ArtifactCache) -> bool:
    return not any((cache.root / "partial").glob("*"))


def test_download_lands_verified_and_a_second_fetch_needs_no_network(
    server: ArtifactServer, cache: ArtifactCache
) -> None:
    url = server.add("model.bin", PAYLOAD)

    path = fetch(url, DIGEST, cache, size=SIZE, margin=0)

    assert path == cache.root / "sha256" / DIGEST and sha256_of(path) == DIGEST
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    # workloads run as users of their own: they pass through to a model they are given, never list or add
    assert [stat.S_IMODE(folder.stat().st_mode) for folder in (cache.root, path.parent)] == [0o711, 0o711]
    assert stat.S_IMODE((cache.root / "partial").stat().st_mode) == 0o700
    assert no_partials(cache)
    server.stop()
    assert fetch(url, DIGEST, cache, size=SIZE, margin=0) == path
    assert fetch(url, f"sha256:{DIGEST.upper()}", cache, margin=0) == path
    assert len(server.seen) == 1
    (entry,) = cache.entries()
    assert (entry.sha256, entry.size, entry.verified_at is not None) == (DIGEST, SIZE, True)


def test_a_cut_transfer_keeps_the_partial_and_the_next_fetch_resumes_from_it(
    server: ArtifactServer, cache: ArtifactCache
) -> None:
    url = server.add("model.bin", PAYLOAD, cut_after=CUT)

    with pytest.raises(SourceUnreachable) as cut:
        fetch(url, DIGEST, cache, size=SIZE, margin=0)
    assert cut.value.reason == "SourceUnreachable" and f"after {CUT} bytes" in str(cut.value)
    assert cache.partial_size(DIGEST) == CUT

    path = fetch(url, DIGEST, cache, size=SIZE, margin=0)

    assert [seen.range for seen in server.gets("model.bin")] == [None, f"bytes={CUT}-"]
    assert sha256_of(path) == DIGEST and no_partials(cache)


def test_a_server_that_ignores_ranges_makes_the_fetch_start_over(
    server: ArtifactServer, cache: ArtifactCache
) -> None:
    url = server.add("model.bin", PAYLOAD, cut_after=CUT, ranges=False)
    with pytest.raises(SourceUnreachable):
        fetch(url, DIGEST, cache, margin=0)

    path = fetch(url, DIGEST, cache, margin=0)

    assert server.gets("model.bin")[-1].range == f"bytes={CUT}-"
    assert sha256_of(path) == DIGEST and path.stat().st_size == SIZE


def test_a_complete_partial_is_finished_when_the_server_has_nothing_past_it(
    server: ArtifactServer, cache: ArtifactCache
) -> None:
    url = server.add("model.bin", PAYLOAD)
    cache.prepare()
    cache.partial_path(DIGEST).write_bytes(PAYLOAD)

    path = fetch(url, DIGEST, cache, margin=0)

    assert server.gets("model.bin")[0].range == f"bytes={SIZE}-"
    assert sha256_of(path) == DIGEST


def test_wrong_bytes_are_refused_and_leave_nothing_behind(server: ArtifactServer, cache: ArtifactCache) -> None:
    url = server.add("model.bin", PAYLOAD, corrupt=True)

    with pytest.raises(InvalidArtifact) as refused:
        fetch(url, DIGEST, cache, size=SIZE, margin=0)

    served = hashlib.sha256(bytes(b ^ 0xFF for b in PAYLOAD)).hexdigest()
    assert (refused.value.expected, refused.value.actual, refused.value.what) == (DIGEST, served, "sha256")
    assert DIGEST in str(refused.value) and served in str(refused.value)
    assert cache.lookup(DIGEST) is None and not cache.path(DIGEST).exists() and no_partials(cache)


def test_a_size_other_than_declared_is_refused(server: ArtifactServer, cache: ArtifactCache) -> None:
    url = server.add("model.bin", PAYLOAD)

    with pytest.raises(InvalidArtifact) as refused:
        fetch(url, DIGEST, cache, size=SIZE - 1, margin=0)

    assert (refused.value.what, refused.value.expected, refused.value.actual) == ("size", str(SIZE - 1), str(SIZE))
    assert no_partials(cache)


def test_not_enough_disk_refuses_the_start_with_the_numbers(server: ArtifactServer, tmp_path: Path) -> None:
    url = server.add("model.bin", PAYLOAD)
    cache = ArtifactCache(tmp_path / "models", free_bytes=lambda path: 200_000)

    for size in (SIZE, None):  # declared up front, or learned from Content-Length
        with pytest.raises(InsufficientDisk) as refused:
            fetch(url, DIGEST, cache, size=size, margin=1000)
        assert (refused.value.needed, refused.value.free) == (SIZE + 1000, 200_000)
        assert str(SIZE + 1000) in str(refused.value) and "200000" in str(refused.value)
        assert not cache.partial_path(DIGEST).exists()
    assert len(server.seen) == 1  # a declared size is refused before any request


def test_a_resumed_fetch_needs_only_the_missing_bytes(server: ArtifactServer, tmp_path: Path) -> None:
    url = server.add("model.bin", PAYLOAD, cut_after=CUT)
    free = [SIZE + 10]
    cache = ArtifactCache(tmp_path / "models", free_bytes=lambda path: free[0])
    with pytest.raises(SourceUnreachable):
        fetch(url, DIGEST, cache, size=SIZE, margin=10)

    free[0] = SIZE - CUT + 9
    with pytest.raises(InsufficientDisk) as refused:
        fetch(url, DIGEST, cache, size=SIZE, margin=10)
    assert refused.value.needed == SIZE - CUT + 10 and cache.partial_size(DIGEST) == CUT
    free[0] += 1
    assert sha256_of(fetch(url, DIGEST, cache, size=SIZE, margin=10)) == DIGEST


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_real_small_disk_is_refused_up_front_and_a_full_one_midway(
    server: ArtifactServer, small_tmpfs: Path
) -> None:
    url = server.add("model.bin", PAYLOAD)

    with pytest.raises(InsufficientDisk) as refused:
        fetch(url, DIGEST, ArtifactCache(small_tmpfs / "models"), margin=0)
    assert refused.value.needed == SIZE and refused.value.free < SIZE

    lying = ArtifactCache(small_tmpfs / "models", free_bytes=lambda path: 10**12)
    with pytest.raises(InsufficientDisk):
        fetch(url, DIGEST, lying, margin=0)
    assert no_partials(lying)


def test_a_deleted_cache_file_is_fetched_again(server: ArtifactServer, cache: ArtifactCache) -> None:
    url = server.add("model.bin", PAYLOAD)
    path = fetch(url, DIGEST, cache, margin=0)

    path.unlink()

    assert cache.lookup(DIGEST) is None
    assert sha256_of(fetch(url, DIGEST, cache, margin=0)) == DIGEST
    assert len(server.gets("model.bin")) == 2


def test_a_modified_cache_file_is_no_longer_trusted_and_fails_verification(
    server: ArtifactServer, cache: ArtifactCache
) -> None:
    path = fetch(server.add("model.bin", PAYLOAD), DIGEST, cache, margin=0)
    before = path.stat()

    path.write_bytes(bytes(SIZE))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))

    assert cache.lookup(DIGEST, SIZE) is None
    assert cache.entries()[0].verified_at is None
    assert cache.verify(DIGEST) is False
    assert not path.exists() and cache.entries() == []


def test_a_file_the_cache_did_not_verify_is_not_trusted_until_verified(cache: ArtifactCache) -> None:
    cache.prepare()
    cache.path(DIGEST).write_bytes(PAYLOAD)

    assert cache.lookup(DIGEST) is None
    # no server: fetch verifies the file in place rather than downloading it
    assert fetch("http://127.0.0.1:9/unused", DIGEST, cache, margin=0) == cache.path(DIGEST)
    assert cache.lookup(DIGEST, SIZE) == cache.path(DIGEST)


def test_a_file_url_is_copied_in_like_a_download(tmp_path: Path, cache: ArtifactCache) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    digest = sha256_of(model)

    path = fetch(model.as_uri(), digest, cache, size=model.stat().st_size, margin=0)

    assert path.read_bytes() == model.read_bytes() and model.exists()
    assert verify_file(model, digest) == digest
    with pytest.raises(InvalidArtifact):
        verify_file(model, DIGEST)
    with pytest.raises(SourceUnreachable):
        fetch((tmp_path / "missing.gguf").as_uri(), DIGEST, cache, margin=0)


def test_credentials_in_a_url_never_reach_a_message(server: ArtifactServer, cache: ArtifactCache) -> None:
    server.add("model.bin", PAYLOAD, corrupt=True)
    server.add("gone.bin", PAYLOAD, status=404)
    server.add("broken.bin", PAYLOAD, status=500)
    port = server.port
    secret = f"http://alice:s3cret@127.0.0.1:{port}"
    failures = []
    expected = (("model.bin", InvalidArtifact), ("gone.bin", SourceUnreachable), ("broken.bin", SourceUnreachable))
    for name, kind in expected:
        with pytest.raises(kind) as failed:
            fetch(f"{secret}/{name}", DIGEST, cache, margin=0)
        failures.append(failed.value)
    server.stop()
    with pytest.raises(SourceUnreachable) as refused:
        fetch(f"{secret}/model.bin", DIGEST, cache, margin=0)
    failures.append(refused.value)

    assert [getattr(failure, "status", None) for failure in failures] == [None, 404, 500, None]
    for failure in failures:
        assert "s3cret" not in str(failure) and "alice" not in str(failure)
        assert f"127.0.0.1:{port}/" in str(failure) and "s3cret" not in failure.url


def test_progress_rises_to_the_total(server: ArtifactServer, cache: ArtifactCache) -> None:
    url = server.add("model.bin", PAYLOAD)
    reports: list[tuple[int, int | None]] = []

    fetch(url, DIGEST, cache, margin=0, progress=lambda done, total: reports.append((done, total)))

    done = [each[0] for each in reports]
    assert done == sorted(done) and reports[-1] == (SIZE, SIZE)
    assert {total for _, total in reports} == {SIZE}


def test_two_fetches_of_one_digest_download_once(server: ArtifactServer, cache: ArtifactCache) -> None:
    url = server.add("model.bin", PAYLOAD, delay=0.3)
    start = threading.Barrier(2)
    results: list[Path] = []

    def one() -> None:
        start.wait()
        results.append(fetch(url, DIGEST, cache, margin=0))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [cache.path(DIGEST)] * 2
    assert len(server.gets("model.bin")) == 1
