"""What a native workload's process does between fork and exec: join its cgroups, then give up root.

It runs in the child before the workload's own code, so the first instants are charged to the workload's cgroups
and no instant runs with the reconciler's privileges. Everything it needs is prepared in the parent (file
descriptors, the ctypes functions, the numbers): the child only makes system calls.
"""

from __future__ import annotations

import ctypes
import os
import resource
import stat
from collections.abc import Callable
from pathlib import Path

from reconciler.drive.cgroups import Placement
from reconciler.observe.processes import RunAs

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_capset = _libc.capset
_capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def child_setup(identity: RunAs | None, placement: Placement) -> Callable[[], None]:
    """The preexec function: join the placement's cgroups and per-process limits, then, for an identity other than
    root, drop every capability (bounding set too), switch groups and user, and set no-new-privileges."""
    last_capability = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    nothing = (_CapData * 2)()

    def setup() -> None:
        for descriptor in placement.procs:
            os.write(descriptor, b"0")  # 0: the writing process itself
        if placement.data_limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (placement.data_limit, placement.data_limit))
        if placement.affinity is not None:
            os.sched_setaffinity(0, placement.affinity)
        if identity is None or identity.uid == 0:
            return  # as the reconciler itself (not root), or as root where the Policy allows it
        for capability in range(last_capability + 1):  # needs CAP_SETPCAP, so before the user switch
            _check(_prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0), "PR_CAPBSET_DROP")
        os.setgroups(list(identity.groups))
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
        _check(_prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "PR_CAP_AMBIENT_CLEAR_ALL")
        _check(_capset(header, nothing), "capset")  # the inheritable set too
        _check(_prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")

    return setup


def describe_privileges(identity: RunAs | None) -> str:
    """For the status's enforcement, beside its `user`: what the process may do."""
    if identity is None:
        return "no user switch: the reconciler is not root"
    if identity.uid == 0:
        return "root, as native.runAsRoot allows: the reconciler's capabilities"
    return "no capabilities (bounding set empty), no-new-privileges"


def first_unsearchable(folder: Path, identity: RunAs) -> Path | None:
    """The first folder from / down to `folder` that `identity` may not pass through, by its mode bits: root's
    chdir into the folder succeeds before the user switch, so the workload would start in a folder it cannot use
    (and a shim that changes directory fails at once). Access-control lists are not consulted: a folder they
    would open must have its mode bits opened."""
    for step in [*reversed(folder.parents), folder]:
        info = step.stat()
        if info.st_uid == identity.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == identity.gid or info.st_gid in identity.groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return step
    return None


def hand_over(working_dir: Path, state_dir: Path, identity: RunAs) -> None:
    """Make the default working folder the workload's own (mode 0700), and the folders above it in the state directory
    passable but not listable (0711), so the workload reaches its folder and the cached models it is given, and
    nothing else there: records, logs and answers stay in folders of mode 0700."""
    if identity.uid == 0:
        return
    make_passable(state_dir)
    if working_dir.parent.stat().st_mode & 0o7777 != 0o711:  # work/ is the reconciler's own
        working_dir.parent.chmod(0o711)
    info = working_dir.lstat()
    if info.st_uid != identity.uid:  # first start as this user (or one made by an earlier version, as root)
        for folder, subfolders, files in os.walk(working_dir):
            for entry in (*subfolders, *files):
                path = os.path.join(folder, entry)
                info = os.lstat(path)
                if stat.S_ISDIR(info.st_mode) or info.st_nlink == 1:  # a hard link may be another file's name
                    os.lchown(path, identity.uid, identity.gid)
        os.lchown(working_dir, identity.uid, identity.gid)
    working_dir.chmod(0o700)


def make_passable(state_dir: Path) -> None:
    """Give the state directory the search bit (0700 becomes 0711), so a workload's user passes it to what it is
    given there (its folder, cached models, the gateway's routes) without listing it."""
    mode = state_dir.stat().st_mode & 0o7777
    if mode & 0o011 != 0o011:  # only ever opened further: a state directory given as /tmp must keep its bits
        state_dir.chmod(mode | 0o011)


def hand_folder(folder: Path, identity: RunAs | None) -> None:
    """Make a folder of the state directory the workload writes to tell the daemon something (a gateway's demand
    records and hosted spool) its user's own, mode 0700, with the files an earlier run as another user left there."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if identity is None or identity.uid == 0:
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_uid != identity.uid:
                os.lchown(entry.path, identity.uid, identity.gid)
    os.lchown(folder, identity.uid, identity.gid)
    folder.chmod(0o700)
