"""Observations of the host that the pure stages take as plain values."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reconciler.base.file_types import file_type


@dataclass(frozen=True)
class EngineFacts:
    """What this host offers to run engines with (observed, then passed in as plain values)."""

    llama_server: str | None = None  # `llama-server` found on PATH
    llama_cpp_python: str | None = None  # a Python that can import llama_cpp.server (the `llama` extra)
    vllm: str | None = None  # `vllm` found on PATH


def find_executable(command: str, path: str, working_dir: str) -> str | None:
    """The file `command` names for a child with this PATH and working directory, as exec would find it."""
    if "/" in command:
        candidate = os.path.normpath(os.path.join(working_dir, command))
        return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    found = shutil.which(command, path=path)
    return os.path.abspath(found) if found else None


@dataclass(frozen=True)
class ModelPresence:
    path: Path
    size: int | None  # None: not there
    magic: bytes = b""  # the first bytes of a file: b"GGUF" for a GGUF model
    modified_ns: int = 0
    refused: str | None = None  # why it was not read: not a regular file (a FIFO would block its reader)

    @property
    def identity(self) -> str:
        """Changes when the file is replaced or rewritten, so a server is restarted onto the new weights."""
        return f"{self.path}:{self.size}:{self.modified_ns}"

    @property
    def present(self) -> bool:
        return self.size is not None


class NotRegularFile(OSError):
    """A FIFO, device, socket or folder where a file is read: refused, never opened for reading in earnest."""


def open_regular(path: str | Path) -> BinaryIO:
    """Open a file for reading only if it is a regular file. The open does not block (a FIFO without a writer
    would block a plain one for good), and the check is of the file opened, so a swap after it changes nothing."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(_not_regular(path, mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def special_file(path: str | Path) -> str | None:
    """Why `path` is not read, when it is there but neither a regular file nor a folder (a FIFO, a device, a
    socket): found without opening it. The opens themselves go through `open_regular`."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else _not_regular(path, mode)


def _not_regular(path: str | Path, mode: int) -> str:
    return f"{path} is {file_type(mode)}, not a regular file: only regular files are read"


def observe_model(path: Path) -> ModelPresence:
    try:
        if path.is_dir():
            files = [f.stat() for f in path.rglob("*") if f.is_file()]
            return ModelPresence(path, sum(f.st_size for f in files), b"", max((f.st_mtime_ns for f in files), default=0))
        with open_regular(path) as handle:
            found = os.fstat(handle.fileno())
            return ModelPresence(path, found.st_size, handle.read(4), found.st_mtime_ns)
    except OSError as error:  # a socket fails the open itself (ENXIO)
        return ModelPresence(path, None, refused=special_file(path) or (str(error) if isinstance(error, NotRegularFile) else None))


def engine_facts() -> EngineFacts:
    """Which engines this host can start: llama-server, llama-cpp-python's server (the `llama` extra), vllm."""
    python = None
    found = importlib.util.find_spec("llama_cpp")
    if found is not None and found.submodule_search_locations:
        server = any((Path(location) / "server").is_dir() for location in found.submodule_search_locations)
        if server and all(importlib.util.find_spec(name) for name in ("uvicorn", "fastapi")):
            python = sys.executable
    llama_server, vllm = shutil.which("llama-server"), shutil.which("vllm")
    return EngineFacts(llama_server and os.path.abspath(llama_server), python, vllm and os.path.abspath(vllm))


_digests: dict[str, tuple[tuple[int, ...], str]] = {}  # path -> (identity, digest): hashed again once it changes


def file_sha256(path: str) -> str | None:
    """The SHA-256 of a file, for pinned executables; None when it cannot be read."""
    try:
        found = os.stat(path)
        # ctime too: an in-place rewrite that restores the mtime still moves it
        identity = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)
        seen = _digests.get(path)
        if seen is None or seen[0] != identity:
            with open_regular(path) as handle:
                seen = _digests[path] = (identity, hashlib.file_digest(handle, "sha256").hexdigest())
        return seen[1]
    except OSError:
        return None


def boot_id() -> str:
    """Which boot this is: a monotonic-clock reading means nothing in another one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the daemon's own start stands in for the boot
        return f"process-{os.getpid()}"
