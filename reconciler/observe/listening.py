"""Where each native workload really listens: its process tree's sockets, read from the host, never from its spec.

One read of the host's socket table and process parents serves every workload looked at within
SNAPSHOT_SECONDS of it. Reading the table once costs about as much as reading one process's sockets
(psutil parses the kernel's tables either way), so a pass with many workloads stays one read, and a
daemon busy with passes reads about once per SNAPSHOT_SECONDS (its listen watch reads afresh at that rhythm).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from reconciler.api.status import Listen
from reconciler.observe.socket_diag import tcp_listeners

SNAPSHOT_SECONDS = 3.0  # how long one read serves the passes that follow it
_UDP_TABLES = ("udp", "udp6")


@dataclass(frozen=True)
class ObservedListens:
    """The sockets the process tree led by `pid` listens on (a child that left the tree but carries the launch's
    markers in its environment counts too)."""

    pid: int
    listening: tuple[Listen, ...]


@dataclass
class _Snapshot:
    listening: Mapping[int, frozenset[Listen]]  # pid -> its listening sockets
    children: Mapping[int, list[int]]  # pid -> its child pids
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
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def read_afresh(self) -> None:
        with self._lock:
            self._snapshot = _read(time.monotonic())

    def of(self, pid: int, markers: Mapping[str, str]) -> ObservedListens:
        """What the tree led by `pid` listens on; `markers`: environment entries that mark its escaped children."""
        with self._lock:
            snapshot = self._fresh()
            tree = snapshot.descendants(pid)
            found = {listen for member, listens in snapshot.listening.items()
                     if member in tree or snapshot.carries(member, markers) for listen in listens}
        return ObservedListens(pid, tuple(sorted(found, key=lambda listen: (listen.port, listen.protocol, listen.address))))

    def _fresh(self) -> _Snapshot:
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot.taken_at >= SNAPSHOT_SECONDS:
            self._snapshot = _read(now)
        return self._snapshot


def listening_table(owners: frozenset[int] | None = None) -> frozenset[tuple[str, str, str]]:
    """The host's listening sockets as the kernel lists them (table, local address, inode, as /proc/net names
    them), without mapping them to processes: cheap to read, and it changes whenever any process starts or stops
    listening. The daemon's listen watch maps sockets to workloads (a scan of every process's descriptors, ~20 ms)
    only when this changed: an idle daemon with 100 workloads spent 5 % of a core doing that every 3 s. `owners`:
    only the sockets these users created (the kernel lists each socket's creator), None: everyone's. TCP listeners
    come from sock_diag (socket_diag.py says why), the UDP tables from /proc/net."""
    try:
        listeners = [(table, local, str(uid), str(inode)) for table, local, uid, inode in tcp_listeners()]
    except OSError:
        return frozenset({("unreadable", "tcp", "")})  # never equal to a readable table: the full read decides
    for table in _UDP_TABLES:
        try:
            with open(f"/proc/net/{table}", encoding="ascii") as lines:
                next(lines, None)  # the column names
                for line in lines:
                    fields = line.split()
                    if set(fields[2].split(":")[0]) == {"0"}:  # no peer: it takes datagrams from anyone
                        listeners.append((table, fields[1], fields[7], fields[9]))
        except OSError:
            return frozenset({("unreadable", table, "")})
    wanted = None if owners is None else {str(uid) for uid in owners}
    return frozenset((table, local, inode) for table, local, uid, inode in listeners if wanted is None or uid in wanted)


def _read(now: float) -> _Snapshot:
    listening: dict[int, set[Listen]] = {}
    for connection in psutil.net_connections(kind="inet"):
        listen = _as_listen(connection)
        if listen is not None and connection.pid is not None:
            listening.setdefault(connection.pid, set()).add(listen)
    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process.pid)
    return _Snapshot({pid: frozenset(listens) for pid, listens in listening.items()}, children, now)


def _as_listen(connection: Any) -> Listen | None:  # one of psutil.net_connections()
    """A TCP listener, or a UDP socket bound with no peer (it takes datagrams from anyone); None for the rest."""
    if connection.type == socket.SOCK_STREAM and connection.status != psutil.CONN_LISTEN:
        return None
    if connection.type == socket.SOCK_DGRAM and connection.raddr:
        return None
    if not connection.laddr:
        return None
    address = ipaddress.ip_address(connection.laddr.ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv6 socket bound to ::ffff:a.b.c.d takes only what reaches a.b.c.d
    protocol = "tcp" if connection.type == socket.SOCK_STREAM else "udp"
    return Listen(address=str(address), port=connection.laddr.port, protocol=protocol)
