"""A real Docker engine for the container tests: a private dockerd, and a busybox image built offline.

No registry is reachable, so the test image is a rootfs holding Debian's busybox-static
(/bin/busybox plus applet links), packed as a tar and loaded with `docker import`.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "httpd", "sleep", "cat", "echo", "ls", "id", "nc", "wget", "true", "false", "kill", "env", "test", "touch")
TEST_IMAGE = "reconciler-test/busybox:1"


@dataclass(frozen=True)
class EngineUnderTest:
    address: str
    private: "PrivateEngine | None"  # None: an engine the tests were given, which they must not stop

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.address, version="auto")


class PrivateEngine:
    """dockerd with its own data root, exec root, pidfile and socket under a temporary folder."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))  # short: a unix socket path has ~107 bytes
        self.address = f"unix://{self.root / 'docker.sock'}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise RuntimeError("no dockerd: install Debian's docker.io (the README's test command needs a Docker engine)")
        log = (self.root / "dockerd.log").open("ab")
        self._process = subprocess.Popen(
            [dockerd, "--storage-driver=vfs", f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
             f"--pidfile={self.root / 'dockerd.pid'}", f"--host={self.address}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dockerd exited: {self.log_tail()}")
            try:
                docker.DockerClient(base_url=self.address, version="auto", timeout=5).ping()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def destroy(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", "-l", str(self.root / "exec")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def busybox_rootfs() -> bytes:
    """A tar of a minimal rootfs: static busybox, a passwd with nobody, and a small web root."""
    binary = BUSYBOX.read_bytes()
    if b"ld-linux" in binary[:8192]:
        raise RuntimeError(f"{BUSYBOX} is dynamically linked: install Debian's busybox-static")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        def add(path: str, data: bytes | None = None, mode: int = 0o644, link: str | None = None) -> None:
            info = tarfile.TarInfo(path)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data) if data is not None else None)

        for folder in ("bin", "etc", "tmp", "www", "proc", "sys", "dev"):
            add(folder)
        add("bin/busybox", binary, 0o755)
        for applet in APPLETS:
            add(f"bin/{applet}", link="busybox")
        add("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
        add("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add("www/index.html", b"hello from a container\n")
        add("www/health", b"ok\n")
    return buffer.getvalue()


def import_image(address: str, reference: str = TEST_IMAGE, marker: str = "") -> str:
    """Load the busybox rootfs as `reference`; a different `marker` gives a different image ID. Returns the ID."""
    client = docker.DockerClient(base_url=address, version="auto")
    repository, tag = reference.rsplit(":", 1)
    changes = ['CMD ["/bin/sh"]', 'ENV PATH=/bin'] + ([f"LABEL marker={marker}"] if marker else [])
    client.api.import_image_from_data(busybox_rootfs(), repository=repository, tag=tag, changes=changes)
    return client.images.get(reference).id
