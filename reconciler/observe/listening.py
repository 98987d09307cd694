"""Where each native workload really listens: its process tree's sockets, read from the host, never from its spec.

One read of the host's listening sockets and of the processes that may hold them (their descriptors and parents)
serves every workload looked at within SNAPSHOT_SECONDS of it, so a pass with many workloads stays one read, and a
daemon busy with passes reads about once per SNAPSHOT_SECONDS (its listen watch reads afresh at that rhythm).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import psutil

from reconciler.api.status import Listen
from reconciler.observe.socket_diag import Listener, listeners

SNAPSHOT_SECONDS = 3.0  # how long one read serves the passes that follow it


@dataclass(frozen=True)
class ObservedListens:
    """The sockets the process tree led by `pid` listens on (a child that left the tree but carries the launch's
    markers in its environment counts too)."""

    pid: int
    listening: tuple[Listen, ...]


@dataclass
class _Snapshot:
    listening: Mapping[int, frozenset[Listen]]  # pid -> its listening sockets
    created_by: Mapping[int, frozenset[Listen]]  # uid -> the listening sockets it created, whoever holds them now
    children: Mapping[int, list[int]]  # pid -> its child pids
    processes: frozenset[int]  # every pid it looked at
    taken_at: float
    environments: dict[int, Mapping[str, str]] = field(default_factory=dict)  # read on demand, once per snapshot

    def descendants(self, leader: int) -> set[int]:
        found, frontier = {leader}, [leader]
        while frontier:
            for child in self.children.get(frontier.pop(), ()):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
        return found

    def carries(self, pid: int, markers: Mapping[str, str]) -> bool:
        if pid not in self.environments:
            try:
                self.environments[pid] = psutil.Process(pid).environ()
            except (psutil.Error, OSError):
                self.environments[pid] = {}
        environment = self.environments[pid]
        return bool(markers) and all(environment.get(name) == value for name, value in markers.items())


class ListenObserver:
    def __init__(self, owners: Callable[[], frozenset[int] | None] = lambda: None) -> None:
        """`owners`: the users whose processes may be a workload's (None: anyone's), asked at each read."""
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._owners = owners

    def read_afresh(self) -> None:
        with self._lock:
            self._snapshot = _read(time.monotonic(), self._owners())

    def of(self, pid: int, markers: Mapping[str, str], own_user: int | None = None) -> ObservedListens:
        """What the tree led by `pid` listens on; `markers`: environment entries that mark its escaped children;
        `own_user`: a user no one but this workload runs as (a dynamic user), whose every socket is the workload's
        even where no process maps to it (a double-forked child with an empty environment, a thread that unshared
        its descriptor table)."""
        with self._lock:
            snapshot = self._fresh()
            if pid not in snapshot.processes:  # it started since: the read shows its user's sockets of another run
                snapshot = self._snapshot = _read(time.monotonic(), self._owners())
            tree = snapshot.descendants(pid)
            found = {listen for member, listens in snapshot.listening.items()
                     if member in tree or snapshot.carries(member, markers) for listen in listens}
            found |= snapshot.created_by.get(own_user, frozenset()) if own_user is not None else frozenset()
        return ObservedListens(pid, tuple(sorted(found, key=lambda listen: (listen.port, listen.protocol, listen.address))))

    def _fresh(self) -> _Snapshot:
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot.taken_at >= SNAPSHOT_SECONDS:
            self._snapshot = _read(now, self._owners())
        return self._snapshot


def listening_table(owners: frozenset[int] | None = None) -> frozenset[tuple[str, str, int]]:
    """The host's listening sockets as the kernel lists them (table, local address, inode), without mapping them to
    processes: cheap to read, and it changes whenever any process starts or stops listening. The daemon's listen
    watch maps sockets to workloads only when this changed: an idle daemon with 100 workloads spent 5 % of a core
    doing that every 3 s. `owners`: only the sockets these users created (the kernel lists each socket's creator),
    None: everyone's."""
    try:
        found = listeners()
    except OSError:
        return frozenset({("unreadable", "", 0)})  # never equal to a readable table: the full read decides
    return frozenset((each.table, each.local, each.inode) for each in found if owners is None or each.uid in owners)


def _read(now: float, owners: frozenset[int] | None) -> _Snapshot:
    """Which process holds each listening socket, and each process's parent: of the processes of `owners` alone
    when given (a workload's user has no capabilities and no-new-privileges: its processes stay its own), judged by
    the credentials in /proc/PID/status (a process can make its /proc folder root's, not its user id)."""
    found = listeners()
    sockets = {each.inode: _as_listen(each) for each in found}  # any creator's: one may be handed to a workload
    created_by: dict[int, set[Listen]] = {}
    for each in found:
        created_by.setdefault(each.uid, set()).add(sockets[each.inode])
    listening: dict[int, frozenset[Listen]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parent, users = _parent_and_users(entry.name)
            if owners is not None and not owners & users:
                continue
            held = {sockets[inode] for inode in _socket_inodes(entry.name) if inode in sockets}
        except (OSError, KeyError, ValueError):
            continue  # it ended meanwhile, or it is not ours to read
        pid = int(entry.name)
        children.setdefault(parent, []).append(pid)
        if held:
            listening[pid] = frozenset(held)
    processes = frozenset(pid for members in children.values() for pid in members)
    return _Snapshot(listening, {uid: frozenset(made) for uid, made in created_by.items()}, children, processes, now)


def _parent_and_users(pid: str) -> tuple[int, set[int]]:
    """Its parent and its real, effective, saved and file-system user ids. Only the two lines are parsed, up to the
    Uid line (PPid comes before it): splitting the whole file of every process was a quarter of a snapshot's CPU."""
    parent = None
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as status:
        for line in status:
            if line.startswith("PPid:"):
                parent = int(line[5:])
            elif line.startswith("Uid:"):
                if parent is None:
                    break
                return parent, set(map(int, line[4:].split()))
    raise KeyError(f"/proc/{pid}/status: no PPid and Uid")


def _socket_inodes(pid: str) -> set[int]:
    found = set()
    for descriptor in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    return found


def _as_listen(listener: Listener) -> Listen:
    address = ipaddress.ip_address(listener.address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv6 socket bound to ::ffff:a.b.c.d takes only what reaches a.b.c.d
    return Listen(address=str(address), port=listener.port, protocol="udp" if listener.table.startswith("udp") else "tcp")
