"""Least privilege for native workloads (the tests run as root, so users are switched for real): a dynamic user of
its own, no capabilities, no new privileges; what it may read and write; the Policy's say over root and named users."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import psutil
import pytest

from reconciler.api.launch import LaunchSpec
from reconciler.drive.artifacts import ArtifactCache
from reconciler.drive.process import ProcessDriver
from reconciler.drive.protocol import StartFailed
from reconciler.drive.users import DYNAMIC_UIDS, DynamicUsers, device_groups
from reconciler.record.evidence import HOST_EVIDENCE_FILE
from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.test_policy_gate import policy_yaml

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def shell(name: str, driver: ProcessDriver, script: str, **fields: object) -> LaunchSpec:
    return LaunchSpec(command=("sh", "-c", script), args=(), executable="/bin/sh", env={},
                      working_dir=driver.default_working_dir(name), memory_limit=None, **fields)


def log_of(driver: ProcessDriver, name: str, expected: str) -> str:
    return wait_for(lambda: (text := Path(driver.log_path(name)).read_text()) and expected in text and text,
                    what=f"{expected!r} in {name}'s log")


@pytest.fixture
def driver(tmp_path: Path):
    (tmp_path / "state").mkdir(mode=0o700)  # as the reconciler makes it when it takes its lock
    driver = ProcessDriver(tmp_path / "state")
    yield driver
    for name in driver.owned_names():
        driver.stop(name, grace_seconds=1.0)


def test_a_workload_and_its_children_run_as_its_dynamic_user_with_no_privilege(driver: ProcessDriver) -> None:
    started = driver.start("web", shell("web", driver, "sleep 60 & echo child $!; echo home=$HOME user=$USER; wait"), 1)
    uid = DynamicUsers(driver.work_root.parent).allocated()["web"]
    assert uid in DYNAMIC_UIDS
    child = int(log_of(driver, "web", "child ").split("child ")[1].split()[0])
    for pid in (started.record.pid, child):
        fields = status_fields(pid)
        assert fields["Uid"].split() == [str(uid)] * 4 and fields["Gid"].split() == [str(uid)] * 4
        assert fields["Groups"] == ""
        assert {fields[cap] for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0000000000000000"}
        assert fields["NoNewPrivs"] == "1"
    assert f"home={driver.default_working_dir('web')} user=localaistack-web" in log_of(driver, "web", "home=")
    assert started.record.user == f"dynamic user localaistack-web (uid {uid}, gid {uid})"
    assert started.record.enforcement["privileges"] == "no capabilities (bounding set empty), no-new-privileges"
    folder = Path(driver.default_working_dir("web")).stat()
    assert (folder.st_uid, folder.st_mode & 0o777) == (uid, 0o700)


def test_it_cannot_write_the_model_cache_or_another_workloads_folder_nor_read_the_state(driver: ProcessDriver) -> None:
    state = driver.work_root.parent
    assert state.stat().st_mode & 0o777 == 0o700
    cache = ArtifactCache(state / "models")
    cache.prepare()
    partial = cache.partial_path("ab" * 32)
    partial.write_bytes(b"GGUF model bytes")
    model = cache.install("ab" * 32, partial)
    driver.start("other", shell("other", driver, "sleep 60"), 1)
    other = driver.default_working_dir("other")
    attempts = {
        "read-model": f"cat {model}",
        "write-model": f"echo x >> {model}",
        "add-to-cache": f"echo x > {model.parent}/planted",
        "write-other": f"echo x > {other}/planted",
        "list-other": f"ls {other}",
        "list-state": f"ls {state}",
        "read-records": f"cat {state}/processes/other.json",
        "read-logs": f"cat {state}/logs/other.log",
        "read-users": f"cat {state}/users.json",
        "write-own": "echo mine > own && cat own",
    }
    script = "; ".join(f"if ({command}) >/dev/null 2>&1; then echo {what}=yes; else echo {what}=no; fi"
                       for what, command in attempts.items()) + "; echo done; sleep 60"
    driver.start("web", shell("web", driver, script), 1)
    outcome = dict(line.split("=") for line in log_of(driver, "web", "done").splitlines() if "=" in line)
    assert outcome == {"read-model": "yes", "write-model": "no", "add-to-cache": "no", "write-other": "no",
                       "list-other": "no", "list-state": "no", "read-records": "no", "read-logs": "no",
                       "read-users": "no", "write-own": "yes"}
    assert model.read_bytes() == b"GGUF model bytes"


def test_a_state_directory_shared_with_others_keeps_its_mode(tmp_path: Path) -> None:
    """Only the search bits a workload needs are ever added: a state directory given as a sticky, shared folder
    (or any folder of the user's) is not narrowed, nor stripped of its sticky bit."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    driver = ProcessDriver(shared)
    try:
        driver.start("web", shell("web", driver, "sleep 60"), 1)
        assert shared.stat().st_mode & 0o7777 == 0o1777
        assert driver.work_root.stat().st_mode & 0o7777 == 0o711
    finally:
        driver.stop("web", grace_seconds=0.0)


def test_a_restart_keeps_the_uid_and_each_workload_has_its_own(driver: ProcessDriver) -> None:
    first = driver.start("web", shell("web", driver, "sleep 60"), 1).record.pid
    uid = psutil.Process(first).uids().real
    driver.stop("web", grace_seconds=1.0)
    again = driver.start("web", shell("web", driver, "touch kept-$(id -u); sleep 60"), 2).record.pid
    assert psutil.Process(again).uids().real == uid
    wait_for(lambda: (Path(driver.default_working_dir("web")) / f"kept-{uid}").exists(), what="a file of the second run")
    other = driver.start("other", shell("other", driver, "sleep 60"), 1).record.pid
    assert psutil.Process(other).uids().real not in (uid, 0)


def test_a_program_its_user_cannot_reach_is_refused_saying_so(driver: ProcessDriver, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    program = private / "serve"
    program.write_text("#!/bin/sh\nsleep 60\n")
    program.chmod(0o755)
    launch = LaunchSpec(command=(str(program),), args=(), executable=str(program), env={},
                        working_dir=driver.default_working_dir("web"), memory_limit=None)
    with pytest.raises(StartFailed) as refused:
        driver.start("web", launch, 1)
    assert refused.value.reason == "PermissionDenied"
    assert refused.value.message.startswith(f"{program}: Permission denied (as dynamic user localaistack-web (uid ")
    assert "search permission on every folder above it" in refused.value.message
    assert not driver.observe("web").record, "nothing half-made is left"


def test_the_device_nodes_of_its_gpus_give_it_their_groups(tmp_path: Path) -> None:
    """A host where GPU nodes belong to video/render (and are not open to all) gives those groups; open nodes none."""
    video, render = 44, 109
    for node, group, mode in (("nvidiactl", video, 0o660), ("nvidia0", render, 0o660), ("nvidia1", 4242, 0o666),
                              ("nvidia-uvm", 0, 0o666)):
        (tmp_path / node).touch()
        os.chown(tmp_path / node, 0, group)
        (tmp_path / node).chmod(mode)
    assert device_groups((0,), tmp_path) == (video, render)
    assert device_groups((1,), tmp_path) == (video,)
    assert device_groups((), tmp_path) == ()


def test_the_device_groups_reach_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the nodes are files in a folder standing in for /dev, read through the same function."""
    import reconciler.drive.users as users

    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidia0").touch()
    os.chown(tmp_path / "dev" / "nvidia0", 0, 4321)
    (tmp_path / "dev" / "nvidia0").chmod(0o660)
    monkeypatch.setattr(users, "DEVICES", tmp_path / "dev")
    driver = ProcessDriver(tmp_path / "state")
    try:
        pid = driver.start("gpu", shell("gpu", driver, "sleep 60", gpus=(0,)), 1).record.pid
        assert status_fields(pid)["Groups"] == "4321"
    finally:
        driver.stop("gpu", grace_seconds=1.0)


# -- through the Policy and the CLI --------------------------------------------------------------------------------


def write_policy(workspace: Workspace, **native: object) -> None:
    workspace.write("policy.yaml", policy_yaml(native={"trustedExecutables": [{"executable": PYTHON}], **native}))


def test_root_and_named_users_need_the_policy(workspace: Workspace) -> None:
    workspace.write("root.yaml", workload_yaml("as-root", user="root"))
    workspace.write("named.yaml", workload_yaml("as-nobody", user="nobody"))
    workspace.write("plain.yaml", workload_yaml("plain"))
    workspace.cli("apply")
    root_refusal = workspace.condition("root.yaml", "as-root", "PolicyApproved")
    assert root_refusal["status"] == "False" and "native.runAsRoot" in root_refusal["message"]
    named_refusal = workspace.condition("named.yaml", "as-nobody", "PolicyApproved")
    assert named_refusal["status"] == "False" and "user 'nobody' is not in spec.native.users" in named_refusal["message"]
    plain = workspace.resource_status("plain.yaml", "plain")
    assert psutil.Process(plain["pid"]).uids().real in DYNAMIC_UIDS
    assert plain["user"].startswith("dynamic user localaistack-plain (uid ")

    write_policy(workspace, runAsRoot=True, users=["nobody"])
    workspace.cli("apply", "--wait")
    assert psutil.Process(workspace.pid("root.yaml", "as-root")).uids().real == 0
    nobody = pwd.getpwnam("nobody")
    named = workspace.resource_status("named.yaml", "as-nobody")
    assert psutil.Process(named["pid"]).uids().real == nobody.pw_uid
    assert named["user"].startswith(f"user nobody (uid {nobody.pw_uid}")
    assert workspace.resource_status("root.yaml", "as-root")["enforcement"]["privileges"] == \
        "root, as native.runAsRoot allows: the reconciler's capabilities"


def test_the_decision_record_says_whom_it_runs_as(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply")
    record = workspace.decision_record("web.yaml", "web")
    assert "as a dynamic user of its own" in record["locations"]["execution"]
    assert "a dynamic user of its own" in record["questions"]["localSecretStorage"]["assumption"]


def test_forget_releases_the_uid(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply")
    users = DynamicUsers(workspace.state)
    uid = users.allocated()["web"]
    (workspace.desired / "web.yaml").unlink()
    workspace.cli("apply")
    assert users.allocated() == {"web": uid}, "a uid stays allocated until the workload is forgotten"
    forgotten = workspace.cli("forget", "web", str(workspace.desired), "--state-dir", str(workspace.state))
    assert forgotten.returncode == 0, forgotten.stderr
    assert f"release its dynamic user's uid {uid}" in forgotten.stdout
    assert users.allocated() == {}
    host_log = [json.loads(line) for line in (workspace.state / HOST_EVIDENCE_FILE).read_text().splitlines()]
    assert host_log[-1]["releasedUid"] == uid


def test_a_reconciler_that_is_not_root_runs_workloads_as_itself(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    program = (
        "import sys, time, psutil\n"
        "from pathlib import Path\n"
        "from reconciler.api.launch import LaunchSpec\n"
        "from reconciler.drive.process import ProcessDriver\n"
        "driver = ProcessDriver(Path(sys.argv[1]))\n"
        "launch = LaunchSpec(command=('sleep',), args=('60',), executable='/bin/sleep', env={},\n"
        "                    working_dir=driver.default_working_dir('web'), memory_limit=None)\n"
        "record = driver.start('web', launch, 1).record\n"
        "print(psutil.Process(record.pid).uids().real, record.user, record.enforcement['privileges'], sep='|')\n"
        "driver.stop('web', 1.0)\n"
    )
    ran = subprocess.run([PYTHON, "-c", program, str(state)], capture_output=True, text=True, timeout=60,
                         user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert ran.returncode == 0, ran.stderr
    uid, user, privileges = ran.stdout.strip().split("|")
    assert int(uid) == nobody.pw_uid and user == "nobody (the reconciler's own)"
    assert privileges == "no user switch: the reconciler is not root"
    assert not (state / "users.json").exists()


def test_an_exec_health_check_runs_as_the_workloads_user(workspace: Workspace) -> None:
    """A check is a program the spec names: it must not run with more privilege than the workload it checks."""
    # healthy only when it runs as the owner of its working folder (the workload's user), and that is not root
    same_user = "import os, sys; sys.exit(0 if os.getuid() == os.stat('.').st_uid != 0 else 1)"
    workspace.write("web.yaml", workload_yaml("web", health={"exec": {"command": [PYTHON, "-c", same_user]},
                                                             "periodSeconds": 0.2}))
    workspace.cli("apply", "--wait")
    ready = workspace.condition("web.yaml", "web")
    assert ready["status"] == "True", ready


def test_an_unreadable_uid_table_refuses_the_start_and_guesses_nothing(driver: ProcessDriver) -> None:
    """A uid guessed afresh could be one a running workload still holds."""
    users = driver.work_root.parent / "users.json"
    users.write_text('{"other": 61184, "web": ')
    with pytest.raises(StartFailed) as refused:
        driver.start("web", shell("web", driver, "sleep 60"), 1)
    assert refused.value.reason == "UserUnavailable" and f"{users} cannot be read" in refused.value.message
    assert users.read_text() == '{"other": 61184, "web": ', "left as found, for whoever restores it"


def test_a_state_directory_its_user_cannot_reach_refuses_the_start_naming_the_folder(tmp_path: Path) -> None:
    """Root's state under a home folder of mode 0700 (as ~/.local/state under /root): the workload's user could not
    reach its working folder, so the start is refused naming the folder that blocks it, and nothing runs."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "state").mkdir(mode=0o700)
    driver = ProcessDriver(home / "state")
    with pytest.raises(StartFailed) as refused:
        driver.start("web", shell("web", driver, "sleep 60"), 1)
    assert refused.value.reason == "PermissionDenied"
    assert refused.value.message.startswith(f"{home} (mode 0700) is not searchable by dynamic user localaistack-web")
    assert f"cannot reach its working folder {driver.default_working_dir('web')}" in refused.value.message
    assert "--state-dir" in refused.value.message
    assert not driver.observe("web").record, "nothing was started"
    home.chmod(0o711)  # the fix the message names
    assert driver.start("web", shell("web", driver, "sleep 60"), 1).record.pid
    driver.stop("web", grace_seconds=0.0)


def test_a_working_folder_its_user_cannot_reach_refuses_the_start(driver: ProcessDriver, tmp_path: Path) -> None:
    private = tmp_path / "private"
    (private / "site").mkdir(parents=True)
    private.chmod(0o700)
    launch = shell("web", driver, "sleep 60").model_copy(update={"working_dir": str(private / "site")})
    with pytest.raises(StartFailed) as refused:
        driver.start("web", launch, 1)
    assert refused.value.message.startswith(f"{private} (mode 0700) is not searchable")
    assert refused.value.message.endswith("or choose another spec.workingDir")


def test_roots_default_state_directory_is_where_the_service_keeps_its_own(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Not under root's home (mode 0700), which no workload's user could pass."""
    from reconciler.cli.common import default_state_dir

    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir(tmp_path / "desired").parent == Path("/var/lib/localaistack-reconciler")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "chosen"))
    assert default_state_dir(tmp_path / "desired").parent == tmp_path / "chosen" / "localaistack-reconciler"


def test_a_uid_a_live_process_runs_as_is_never_allocated(tmp_path: Path) -> None:
    """Dynamic users are allocated per state directory: another reconciler's, or a workload left running by a state
    directory since removed, may run as the first free uid of this one. Every socket a dynamic user creates is its
    workload's, so the uid must be no other process's."""
    first = DYNAMIC_UIDS.start  # what an empty users.json gives first
    other = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: os.setresuid(first, first, first))
    try:
        wait_for(lambda: psutil.Process(other.pid).uids().real == first, 10, what="the other process's uid")
        assert DynamicUsers(tmp_path).allocate("web") != first
    finally:
        other.kill()
        other.wait()
