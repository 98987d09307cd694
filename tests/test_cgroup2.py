"""cgroup v2 on a real cgroup2 file system, mounted for the test (the unified hierarchy of this kernel; the memory and
cpu controllers are bound to cgroup v1 here, so limits themselves are not exercised): placement before the
workload's own code, the daemon's leaf, cgroup.events, cgroup.kill of a whole tree, and why limits fall back."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from reconciler.api.launch import LaunchSpec
from reconciler.drive.cgroup2 import DAEMON_LEAF, own_path, populated
from reconciler.drive.cgroups import ROOT_VARIABLE, UNIFIED, Cgroups
from reconciler.drive.process import ProcessDriver, owner_id
from tests.conftest import PYTHON, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a cgroup2 file system needs root")


@pytest.fixture
def delegated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cgroup of the unified hierarchy for this test, this process moved into it (as systemd's Delegate=yes gives
    the unit's cgroup to the daemon), and the reconciler pointed at the mount; all undone afterwards."""
    mount = tmp_path / "cgroup2"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "cgroup2", "none", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a cgroup2 file system here")
    original = own_path() or "/"
    group = mount / f"reconciler-test-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
        (group / "cgroup.procs").write_text(str(os.getpid()))
        monkeypatch.setenv(ROOT_VARIABLE, str(mount))
        yield group
    finally:
        (mount / original.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
        for folder, _, _ in sorted(os.walk(group), key=lambda entry: -len(entry[0])):
            cgroup = Path(folder)
            if (cgroup / "cgroup.kill").exists():
                (cgroup / "cgroup.kill").write_text("1")
            wait_for(lambda: not populated(cgroup), what=f"{cgroup} emptied")
            cgroup.rmdir()
        subprocess.run(["umount", str(mount)], check=True)


def shell(driver: ProcessDriver, name: str, script: str) -> LaunchSpec:
    return LaunchSpec(command=("sh", "-c", script), args=(), executable="/bin/sh", env={},
                      working_dir=driver.default_working_dir(name), memory_limit=None)


def test_the_workload_is_in_its_cgroup_before_its_own_code_runs_and_the_daemon_in_a_leaf(
        delegated: Path, tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path / "state")
    try:
        record = driver.start("web", shell(driver, "web", "grep ^0:: /proc/$$/cgroup; sleep 60"), 1).record
        cgroup = delegated / f"localaistack-{owner_id(tmp_path / 'state')}" / "web"
        assert record.cgroups[UNIFIED] == str(cgroup)
        log = Path(driver.log_path("web"))
        first = wait_for(lambda: log.read_text(), what="the workload's first line")
        assert first == f"0::/{cgroup.relative_to(delegated.parent)}\n", "its first command already ran in its cgroup"
        assert str(os.getpid()) in (delegated / DAEMON_LEAF / "cgroup.procs").read_text().split()
        assert (delegated / "cgroup.procs").read_text() == "", "no process left where controllers are handed down"
        assert populated(cgroup)
        assert record.enforcement["tree"] == f"cgroup v2 {cgroup}: every descendant stays in it, stopped as a whole " \
                                             "with cgroup.kill"
        if "pids" not in (delegated / "cgroup.controllers").read_text().split():
            assert record.enforcement["pids"] == f"none: the cgroup v2 pids controller is not available under {delegated}"
        driver.stop("web", grace_seconds=1.0)
        assert not cgroup.exists(), "its cgroup goes with its record"
    finally:
        driver.stop("web", grace_seconds=0.0)


def test_stop_ends_the_whole_tree_even_what_left_the_group_and_shed_the_markers(delegated: Path, tmp_path: Path) -> None:
    """A descendant in a new session, with an empty environment and SIGTERM ignored, is found by the cgroup alone."""
    escapee = "setsid env -i /bin/sh -c 'trap \"\" TERM; while true; do sleep 1; done' & echo escaped $!; wait"
    driver = ProcessDriver(tmp_path / "state")
    record = driver.start("web", shell(driver, "web", escapee), 1).record
    log = Path(driver.log_path("web"))
    pid = int(wait_for(lambda: "escaped" in log.read_text() and log.read_text(), what="the escapee").split()[1])
    wait_for(lambda: "LOCALAISTACK_LAUNCH" not in psutil.Process(pid).environ(), what="the escapee's empty environment")
    assert os.getsid(pid) == pid
    cgroup = Path(record.cgroups[UNIFIED])
    assert pid in [int(member) for member in (cgroup / "cgroup.procs").read_text().split()]
    driver.stop("web", grace_seconds=0.5, forget=False)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not populated(cgroup)


def test_under_systemd_without_a_subgroup_no_controller_is_enabled_and_that_is_said(
        delegated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd restarts the daemon into the unit's own cgroup, which fails once that cgroup hands controllers down
    while workloads run beneath it: without DelegateSubgroup= the tree is used, the controllers are not."""
    monkeypatch.setenv("INVOCATION_ID", "0" * 32)  # what systemd sets for every process it starts
    driver = ProcessDriver(tmp_path / "state")
    try:
        launch = shell(driver, "web", "sleep 60").model_copy(update={"memory_limit": 2**27})
        record = driver.start("web", launch, 1).record
        assert Path(record.cgroups[UNIFIED]).parent.parent == delegated, "still placed in a cgroup of its own"
        why = (f"cgroup v2: systemd started the daemon in {delegated} itself, so enabling controllers there would make "
               "the next restart fail while workloads run; add DelegateSubgroup=daemon to the unit (systemd 254+)")
        assert record.enforcement["pids"] == f"none: {why}"
        assert record.enforcement["memory"] == f"rlimit RLIMIT_DATA on the main process only ({why})"
        assert (delegated / "cgroup.subtree_control").read_text().split() == []
    finally:
        driver.stop("web", grace_seconds=0.0)


def test_without_delegation_the_reason_is_said(delegated: Path) -> None:
    """A reconciler whose cgroup it may not write (not root, no Delegate=yes) says so for every limit."""
    nobody = pwd.getpwnam("nobody")
    program = ("from reconciler.drive.cgroups import Cgroups\n"
               "cgroups = Cgroups('owner')\n"
               "print(cgroups.unavailable['memory']); print(cgroups.place('web', 2**27, None).enforced['pids'])\n")
    ran = subprocess.run([PYTHON, "-c", program], capture_output=True, text=True, timeout=60, user=nobody.pw_uid,
                         group=nobody.pw_gid, extra_groups=[],
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert ran.returncode == 0, ran.stderr
    why = f"cgroup v2: the reconciler's cgroup {delegated} is not delegated to it (not writable): run it under the " \
          "unit, which has Delegate=yes, or as root"
    assert ran.stdout.splitlines() == [why, f"none: {why}"]


def test_an_oom_kill_is_read_from_memory_events(tmp_path: Path) -> None:
    """The file as the kernel writes it (no memory controller on cgroup v2 here to make a real one)."""
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert Cgroups.oom_killed(str(tmp_path))
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
    assert not Cgroups.oom_killed(str(tmp_path))
