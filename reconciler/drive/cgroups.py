"""Resource limits for a workload's whole process tree: a cgroup per workload where this host lets us
create one (cgroup v1 memory and cpu controllers), else the nearest per-process equivalent.

What applied is returned as plain words for the status ("cgroup v1 memory", "rlimit RLIMIT_AS ...",
"none: ..."), because a limit the user believes in but that is not enforced is worse than none.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


class Cgroups:
    def __init__(self, owner: str, root: Path = CGROUP_ROOT) -> None:
        self._prefix = f"localaistack-{owner}"
        self._bases: dict[str, Path] = {}
        self.unavailable: dict[str, str] = {}
        for controller in ("memory", "cpu"):
            base, why = _v1_base(root, controller)
            if base is not None:
                self._bases[controller] = base / self._prefix
            else:
                self.unavailable[controller] = why

    def apply(self, name: str, pid: int, memory_limit: int | None, cpus: float | None) -> dict[str, str]:
        """Limit the process tree of `pid`; returns what was enforced for each resource asked for."""
        enforced: dict[str, str] = {}
        if memory_limit is not None:
            enforced["memory"] = self._memory(name, pid, memory_limit)
        if cpus is not None:
            enforced["cpu"] = self._cpu(name, pid, cpus)
        return enforced

    def oom_killed(self, name: str) -> bool:
        control = self._path("memory", name) / "memory.oom_control"
        try:
            fields = dict(line.split() for line in control.read_text().splitlines())
        except (OSError, ValueError):
            return False
        return int(fields.get("oom_kill", "0")) > 0

    def release(self, name: str) -> None:
        for controller, base in self._bases.items():
            for cgroup in (self._path(controller, name), base):  # the shared parent goes with its last child
                try:
                    cgroup.rmdir()
                except OSError:
                    pass  # absent, still in use, or a straggler inside: a later release tries again

    def _memory(self, name: str, pid: int, limit: int) -> str:
        cgroup = self._path("memory", name)
        if "memory" in self._bases:
            try:
                self._fresh(cgroup)
                (cgroup / "memory.limit_in_bytes").write_text(str(limit))
                swap = cgroup / "memory.memsw.limit_in_bytes"
                if swap.exists():  # memory + swap: the limit must not be escaped by swapping
                    swap.write_text(str(limit))
                (cgroup / "cgroup.procs").write_text(str(pid))
                return f"cgroup v1 memory ({cgroup})"
            except OSError as error:
                why = f"cgroup {cgroup}: {error.strerror}"
        else:
            why = self.unavailable["memory"]
        psutil.Process(pid).rlimit(resource.RLIMIT_AS, (limit, limit))
        return f"rlimit RLIMIT_AS on the main process only ({why})"

    def _cpu(self, name: str, pid: int, cpus: float) -> str:
        cgroup = self._path("cpu", name)
        if "cpu" in self._bases:
            try:
                self._fresh(cgroup)
                (cgroup / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (cgroup / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpus * CPU_PERIOD_US))))
                (cgroup / "cgroup.procs").write_text(str(pid))
                return f"cgroup v1 cpu quota {cpus:g} CPUs ({cgroup})"
            except OSError as error:
                why = f"cgroup {cgroup}: {error.strerror}"
        else:
            why = self.unavailable["cpu"]
        allowed = sorted(os.sched_getaffinity(pid))[: max(1, math.ceil(cpus))]
        os.sched_setaffinity(pid, allowed)
        return f"cpu affinity {allowed} ({why})"

    def _path(self, controller: str, name: str) -> Path:
        return self._bases.get(controller, Path("/nonexistent")) / name

    @staticmethod
    def _fresh(cgroup: Path) -> None:
        """A new cgroup per start, so counters such as oom_kill describe this run only."""
        if cgroup.exists():
            cgroup.rmdir()
        cgroup.mkdir(parents=True)


def _v1_base(root: Path, controller: str) -> tuple[Path | None, str]:
    """Our own cgroup for a v1 controller, if that hierarchy is mounted and writable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as error:
        return None, f"cannot read /proc/self/cgroup: {error.strerror}"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            base = root / controllers / path.lstrip("/")
            if not base.is_dir() or not os.access(base, os.W_OK):
                return None, f"{base} is not writable by the reconciler"
            return base, ""
    return None, f"no cgroup v1 {controller} controller (cgroup v2 delegation is not supported yet)"
