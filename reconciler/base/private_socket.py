"""The daemon's query socket: where it lives and what makes it trustworthy, for both ends.

The state directory may be a shared folder (/tmp, sticky, anyone can create names in it), so the socket lives in a
folder of its own that only its owner can enter (0700), and both ends check the folder, the socket (0600, a socket,
not a link) and the other end's uid (SO_PEERCRED) before a byte is read or trusted. Standard library only: the
command line imports this before it knows whether it needs anything heavier."""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

QUERY_FOLDER = "query"
QUERY_SOCKET = "daemon.sock"
MAX_REQUEST_BYTES = 64 * 1024  # a request names a command and its options: anything longer is not one


class Untrusted(Exception):
    """The folder, the socket or the process at its other end is not this account's own."""


def socket_path(state_dir: Path) -> Path:
    return state_dir / QUERY_FOLDER / QUERY_SOCKET


@contextmanager
def owner_only_folder(state_dir: Path, create: bool = False) -> Iterator[str]:
    """The query folder, checked, as a short name for bind() and connect(): an AF_UNIX name holds 107 bytes, a state
    directory's path may be longer, and a name through the checked folder's descriptor cannot be swapped after the
    check."""
    folder = state_dir / QUERY_FOLDER
    if create:
        folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _check_owner_only(folder, os.fstat(fd), stat.S_IFDIR)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def check_socket(folder: str) -> None:
    """The socket in a folder owner_only_folder() gave: a socket (not a link to one), this account's, 0600."""
    _check_owner_only(Path(folder, QUERY_SOCKET), os.lstat(Path(folder, QUERY_SOCKET)), stat.S_IFSOCK)


def _check_owner_only(path: Path, info: os.stat_result, expected_type: int) -> None:
    if stat.S_IFMT(info.st_mode) != expected_type:
        raise Untrusted(f"{path}: not a {'folder' if expected_type == stat.S_IFDIR else 'socket'}")
    if info.st_uid != os.geteuid():
        raise Untrusted(f"{path}: owned by uid {info.st_uid}, not by this account (uid {os.geteuid()})")
    if info.st_mode & 0o077:
        raise Untrusted(f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others in (expected owner-only)")


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel saw it connect (not what it says)."""
    _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                struct.calcsize("3i")))
    return uid


def check_peer(connection: socket.socket) -> None:
    uid = peer_uid(connection)
    if uid != os.geteuid():
        raise Untrusted(f"the other end of the query socket runs as uid {uid}, not as this account")
