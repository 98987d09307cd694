"""Finding and ending a workload's whole process group, including what outlived its leader."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from reconciler.drive import cgroup2

KILL_WAIT_SECONDS = 5.0


def start_ticks(pid: int) -> int:
    """The kernel's start time of a pid in clock ticks since boot: unlike wall-clock times, NTP steps can't move it."""
    return start_ticks_and_state(pid)[0]


def start_ticks_and_state(pid: int) -> tuple[int, str]:
    """Its start ticks and its state letter (R, S, Z for a zombie...), from one read of /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19]), fields[0].decode()


def terminate_group(
    pid: int, grace_seconds: float, child: subprocess.Popen[bytes] | None = None,
    markers: dict[str, str] | None = None, leader_alive: bool = True, cgroup: Path | None = None,
) -> None:
    """TERM everything the launch led by `pid` made, wait out the grace period, KILL what is left.

    That is the leader's group and descendants, every process in its cgroup v2 (`cgroup`: nothing leaves it),
    and any process whose environment carries all of `markers` (children that left the group with setsid).
    With the leader gone its pid may be reused, so group members must then carry the markers too.
    """
    members = _members(pid, markers, leader_alive, cgroup)
    _signal(members, signal.SIGTERM)
    alive = _wait_gone(members, grace_seconds, child)
    stragglers = {process.pid: process for process in [*alive, *_members(pid, markers, leader_alive, cgroup)]
                  if _running(process)}
    if stragglers and not (cgroup is not None and cgroup2.kill(cgroup)):  # else the kernel kills the tree at once
        _signal(list(stragglers.values()), signal.SIGKILL)
    if stragglers:
        _wait_gone(list(stragglers.values()), KILL_WAIT_SECONDS, child)
    if child is not None:
        child.poll()


def _members(pid: int, markers: dict[str, str] | None, leader_alive: bool, cgroup: Path | None) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for member in cgroup2.members(cgroup) if cgroup is not None else ():
        try:
            found[member] = psutil.Process(member)
        except psutil.Error:
            continue
    if leader_alive:
        try:
            leader = psutil.Process(pid)
            found |= {process.pid: process for process in [leader, *leader.children(recursive=True)]}
        except psutil.Error:
            pass
    for process in psutil.process_iter():
        if process.pid in found or process.pid == os.getpid():
            continue
        try:
            in_group = os.getpgid(process.pid) == pid
            if (in_group and leader_alive) or (markers and _carries(process, markers)):
                found[process.pid] = process
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return list(found.values())


def _carries(process: psutil.Process, markers: dict[str, str]) -> bool:
    environment = process.environ()
    return all(environment.get(name) == value for name, value in markers.items())


def _signal(members: list[psutil.Process], number: int) -> None:
    for member in members:
        try:
            member.send_signal(number)
        except psutil.Error:
            pass


def _wait_gone(members: list[psutil.Process], timeout: float, child: subprocess.Popen[bytes] | None) -> list[psutil.Process]:
    """Wait until every member has ended. A zombie has ended: its parent, not us, may be the one to reap it."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        if child is not None:
            child.poll()
        alive = [member for member in members if _running(member)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.1)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
