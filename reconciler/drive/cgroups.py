"""Resource limits for a workload's whole process tree: a cgroup per workload where this host lets us
create one (cgroup v1 memory and cpu controllers), else the nearest per-process equivalent.

What applied is returned as plain words for the status ("cgroup v1 memory", "rlimit RLIMIT_DATA ...",
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

    def apply(self, name: str, pid: int, memory_limit: int | None, cpus: float | None) -> tuple[dict[str, str], dict[str, str]]:
        """Limit the process tree of `pid`. Returns what was enforced per resource (words for the status)
        and the cgroup made per controller (kept in the process record: OOM checks and clean-up use it)."""
        enforced: dict[str, str] = {}
        cgroups: dict[str, str] = {}
        for resource_name, limit, limiter in (("memory", memory_limit, self._memory), ("cpu", cpus, self._cpu)):
            if limit is None:
                continue
            try:
                enforced[resource_name], cgroup = limiter(name, pid, limit)  # type: ignore[operator]
            except (OSError, psutil.Error) as error:
                enforced[resource_name], cgroup = f"none: {error}", None
            if cgroup is not None:
                cgroups[resource_name] = str(cgroup)
        return enforced, cgroups

    @staticmethod
    def oom_killed(memory_cgroup: str | None) -> bool:
        """Whether the kernel killed a process of this cgroup for exceeding its limit."""
        if memory_cgroup is None:
            return False
        control = Path(memory_cgroup) / "memory.oom_control"
        try:
            fields = dict(line.split() for line in control.read_text().splitlines())
        except (OSError, ValueError):
            return False
        return int(fields.get("oom_kill", "0")) > 0

    @staticmethod
    def release(cgroups: dict[str, str]) -> None:
        for cgroup in map(Path, cgroups.values()):
            for directory in (cgroup, cgroup.parent):  # our shared parent goes with its last child
                try:
                    directory.rmdir()
                except OSError:
                    pass  # absent, still in use, or a straggler inside: a later release tries again

    def _memory(self, name: str, pid: int, limit: int) -> tuple[str, Path | None]:
        # memory + swap too, where accounted: the limit must not be escaped by swapping
        settings = {"memory.limit_in_bytes": str(limit), "memory.memsw.limit_in_bytes?": str(limit)}
        cgroup, why = self._place("memory", name, pid, settings)
        if cgroup is not None:
            return f"cgroup v1 memory ({cgroup})", cgroup
        # RLIMIT_DATA, not RLIMIT_AS: CUDA reserves vast address space it never touches
        psutil.Process(pid).rlimit(resource.RLIMIT_DATA, (limit, limit))
        return f"rlimit RLIMIT_DATA on the main process only ({why})", None

    def _cpu(self, name: str, pid: int, cpus: float) -> tuple[str, Path | None]:
        quota = max(1000, int(cpus * CPU_PERIOD_US))
        cgroup, why = self._place("cpu", name, pid, {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(quota)})
        if cgroup is not None:
            return f"cgroup v1 cpu quota {cpus:g} CPUs ({cgroup})", cgroup
        allowed = sorted(os.sched_getaffinity(pid))[: max(1, math.ceil(cpus))]
        os.sched_setaffinity(pid, allowed)
        return f"cpu affinity {allowed} ({why})", None

    def _place(self, controller: str, name: str, pid: int, settings: dict[str, str]) -> tuple[Path | None, str]:
        """A fresh cgroup with `settings` (a name ending in '?' only where the kernel has it), then the process."""
        if controller not in self._bases:
            return None, self.unavailable[controller]
        cgroup = self._path(controller, name)
        try:
            self._fresh(cgroup)
            for file, value in settings.items():
                target = cgroup / file.rstrip("?")
                if not file.endswith("?") or target.exists():
                    target.write_text(value)
            (cgroup / "cgroup.procs").write_text(str(pid))
        except OSError as error:
            return None, f"cgroup {cgroup}: {error.strerror}"
        return cgroup, ""

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
