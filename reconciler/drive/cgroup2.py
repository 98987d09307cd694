"""The unified cgroup hierarchy (cgroup v2): a cgroup per workload inside the subtree delegated to the reconciler.

Under systemd's Delegate=yes the unit's cgroup is the reconciler's to divide. The no-internal-processes rule says a
cgroup that hands controllers to its children holds no process itself, so the daemon first moves into a leaf of its
own (`daemon`), then enables the controllers it needs for the workloads' parent (`localaistack-OWNER`), where each
workload gets a fresh child per start. What cannot be done is said exactly, for the status: a limit the user
believes in but that is not enforced is worse than none.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

DAEMON_LEAF = "daemon"
CONTROLLERS = ("memory", "cpu", "pids")
EMPTY_WAIT_SECONDS = 5.0  # for the kernel to reap what cgroup.kill ended


class UnifiedTree:
    """The reconciler's delegated cgroup v2 subtree, or why there is none (`problem`)."""

    def __init__(self, root: Path, owner: str) -> None:
        self.root = root
        self.base: Path | None = None
        self.problem: str | None = None
        self.enabled: frozenset[str] = frozenset()  # controllers the workloads' parent hands to each workload
        self.controllers_withheld: str | None = None  # why no controller is enabled, though they are offered
        self._prepared = False
        self._parent_name = f"localaistack-{owner}"
        path = own_path()
        if path is None:
            self.problem = f"cgroup v2 at {root}, but /proc/self/cgroup names no cgroup of the unified hierarchy"
            return
        base = root / path.lstrip("/")
        base = base.parent if base.name == DAEMON_LEAF else base  # a restarted daemon is in its leaf already
        if not all(os.access(target, os.W_OK) for target in (base, base / "cgroup.procs", base / "cgroup.subtree_control")):
            self.problem = (f"cgroup v2: the reconciler's cgroup {base} is not delegated to it (not writable): run it "
                            "under the unit, which has Delegate=yes, or as root")
            return
        self.base = base
        if os.environ.get("INVOCATION_ID") and path.rstrip("/").rsplit("/", 1)[-1] != DAEMON_LEAF:
            # systemd starts a restarted daemon in the unit's cgroup, which it cannot do once that cgroup hands
            # controllers down while workloads run in its children (systemd issue 24064): not without a subgroup
            self.controllers_withheld = (
                f"cgroup v2: systemd started the daemon in {base} itself, so enabling controllers there would make the "
                "next restart fail while workloads run; add DelegateSubgroup=daemon to the unit (systemd 254+)")

    @property
    def parent(self) -> Path | None:
        return self.base / self._parent_name if self.base is not None else None

    def available(self) -> frozenset[str]:
        """The controllers the delegated subtree offers (the kernel may bind some to cgroup v1 instead)."""
        if self.base is None:
            return frozenset()
        try:
            return frozenset((self.base / "cgroup.controllers").read_text().split())
        except OSError:
            return frozenset()

    def prepare(self) -> None:
        """Once, before the first start (never for a driver that only observes): the daemon into its leaf, the
        controllers enabled down to the workloads' parent. Raises OSError when the kernel refuses."""
        if self._prepared or self.base is None or self.parent is None:
            return
        leaf = self.base / DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in (self.base / "cgroup.procs").read_text().split():  # every process, or no controller can be enabled
            try:
                (leaf / "cgroup.procs").write_text(pid)
            except ProcessLookupError:
                continue  # ended meanwhile
        self.parent.mkdir(exist_ok=True)
        wanted = [name for name in CONTROLLERS if name in self.available() and self.controllers_withheld is None]
        for cgroup in (self.base, self.parent):
            for name in wanted:
                (cgroup / "cgroup.subtree_control").write_text(f"+{name}")
        self.enabled = frozenset((self.parent / "cgroup.subtree_control").read_text().split())
        self._prepared = True

    def fresh(self, name: str) -> Path:
        """A new cgroup for one run of workload `name`, so its counters (oom_kill) describe this run only."""
        self.prepare()
        assert self.parent is not None
        cgroup = self.parent / name
        if cgroup.exists():
            kill(cgroup)  # a straggler of the last run would keep it from being removed
            deadline = time.monotonic() + EMPTY_WAIT_SECONDS
            while populated(cgroup) and time.monotonic() < deadline:
                time.sleep(0.01)
            cgroup.rmdir()
        cgroup.mkdir()
        return cgroup


def own_path() -> str | None:
    """This process's cgroup in the unified hierarchy (the `0::` line)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    return next((line[3:] for line in lines if line.startswith("0::")), None)


def is_unified(root: Path) -> bool:
    """Whether `root` is a cgroup v2 mount (only the unified hierarchy has cgroup.controllers at its top)."""
    return (root / "cgroup.controllers").is_file()


def members(cgroup: Path) -> list[int]:
    """Every process in it and beneath it: what left the process group (setsid, double fork) cannot leave this."""
    found: list[int] = []
    for folder, _, _ in os.walk(cgroup):
        try:
            found += [int(pid) for pid in (Path(folder) / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def populated(cgroup: Path) -> bool:
    try:
        events = dict(line.split() for line in (cgroup / "cgroup.events").read_text().splitlines())
    except (OSError, ValueError):
        return False
    return events.get("populated") == "1"


def kill(cgroup: Path) -> bool:
    """SIGKILL the whole tree at once where the kernel has cgroup.kill (5.14+); False where it has not."""
    target = cgroup / "cgroup.kill"
    if not target.exists():
        return False
    try:
        target.write_text("1")
    except OSError:
        return False
    return True
