"""Who a native workload runs as, when the reconciler is root: a dynamic user of its own, or a named one.

A dynamic user is a uid (and a gid of the same number) from a reserved range, allocated per workload name and kept
in the state directory, so a restart runs as the same uid and files it made stay its own; `forget` releases it.
No passwd entry is written: like systemd's DynamicUser=, the number is the identity. The driver executes what the
gate allowed (a named user, root); it decides nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import stat
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import psutil

from reconciler.base.atomic import read_regular, write_atomic
from reconciler.observe.processes import RunAs

DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range: no distribution assigns it to accounts
USERS_FILE = "users.json"
DYNAMIC_PREFIX = "localaistack-"
DEVICES = Path("/dev")
# The nodes a CUDA process opens: the control and UVM nodes, and one per assigned GPU
_NVIDIA_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


class UserUnavailable(Exception):
    """The requested user cannot be switched to here (the message says why)."""


def reconciler_is_root() -> bool:
    return os.geteuid() == 0


def own_user() -> str:
    """The reconciler's user, by name where it has one."""
    uid = os.geteuid()
    return pwd.getpwuid(uid).pw_name if _has_account(uid) else str(uid)


class DynamicUsers:
    """The uids allocated to workloads, in `users.json` (name -> uid), changed under a lock file by one writer at a time
    (the daemon allocates while `forget` may release)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / USERS_FILE
        self._lock = state_dir / f".{USERS_FILE}.lock"

    def allocated(self) -> dict[str, int]:
        try:
            table = json.loads(read_regular(self.path))
            return {str(name): int(uid) for name, uid in table.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as error:  # never guess: a guess may reuse a live uid
            raise UserUnavailable(f"{self.path} cannot be read ({error}): it says which uid each workload has; restore "
                                  "it, or remove it once no workload started by this reconciler runs") from None

    def allocate(self, name: str) -> int:
        with self._locked():
            table = self.allocated()
            if name in table:
                return table[name]
            taken = set(table.values()) | _uids_running()
            uid = next((uid for uid in DYNAMIC_UIDS if uid not in taken and not _has_account(uid)), None)
            if uid is None:
                raise UserUnavailable(f"every uid of {DYNAMIC_UIDS.start}-{DYNAMIC_UIDS.stop - 1} is allocated: "
                                      "forget workloads that are gone (`reconciler forget Workload/NAME`)")
            self._write(table | {name: uid})
            return uid

    def release(self, name: str) -> int | None:
        """The uid it had, now free for another workload; None when it had none."""
        with self._locked():
            table = self.allocated()
            uid = table.pop(name, None)
            if uid is not None:
                self._write(table)
            return uid

    def _write(self, table: dict[str, int]) -> None:
        write_atomic(self.path, json.dumps(table, sort_keys=True, indent=1) + "\n", mode=0o600)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def resolve_identity(name: str, requested: str | None, gpus: tuple[int, ...], users: DynamicUsers,
                     working_dir: str) -> RunAs | None:
    """Whom to run workload `name` as: None when the reconciler is not root (it runs workloads as itself).
    `requested`: the spec's user (the gate allowed it); None: a dynamic user."""
    if not reconciler_is_root():
        own = own_user()
        if requested not in (None, own):
            raise UserUnavailable(f"the reconciler runs as {own}, not root, so it cannot start a workload as "
                                  f"{requested}: remove spec.user, or run the reconciler as root")
        return None
    extra = device_groups(gpus, DEVICES)
    if requested is None:
        uid = users.allocate(name)
        return RunAs(uid=uid, gid=uid, name=f"{DYNAMIC_PREFIX}{name}"[:32], home=working_dir, groups=extra, dynamic=True)
    try:
        account = pwd.getpwnam(requested)
    except KeyError:
        raise UserUnavailable(f"user {requested!r} does not exist on this host: create it, or fix spec.user") from None
    if account.pw_uid == 0 and requested != "root":
        raise UserUnavailable(f"user {requested!r} has uid 0: it is root by another name; name it root in spec.user "
                              "(which the Policy's native.runAsRoot must allow)")
    groups = tuple(sorted({*os.getgrouplist(requested, account.pw_gid), *extra}))
    return RunAs(uid=account.pw_uid, gid=account.pw_gid, name=requested, home=account.pw_dir, groups=groups)


def device_groups(gpus: tuple[int, ...], devices: Path) -> tuple[int, ...]:
    """The groups that open the GPU device nodes a workload was assigned (video, render, or whatever the host uses),
    where those nodes are not open to everyone already."""
    if not gpus:
        return ()
    nodes = [devices / node for node in _NVIDIA_NODES] + [devices / f"nvidia{index}" for index in gpus]
    groups = set()
    for node in nodes:
        try:
            info = node.stat()
        except OSError:
            continue
        if info.st_gid != 0 and (info.st_mode & (stat.S_IROTH | stat.S_IWOTH)) != (stat.S_IROTH | stat.S_IWOTH):
            groups.add(info.st_gid)
    return tuple(sorted(groups))


def _uids_running() -> set[int]:
    """The real uids of the live processes: a uid another state directory's workload (or one left running by a
    state directory since removed) runs as is no dynamic user of ours, whatever users.json says. Every socket a
    dynamic user creates is taken for its workload's."""
    return {process.info["uids"].real for process in psutil.process_iter(["uids"]) if process.info["uids"]}


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
