"""Running as a systemd service: sd_notify against real sockets, the unit's sandbox, install.sh and
uninstall.sh into a temporary root (a real venv and a real pip install), and `systemd-analyze verify`."""

from __future__ import annotations

import configparser
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from reconciler.control import systemd
from tests.conftest import Workspace, wait_for, workload_yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = "localaistack-reconciler.service"
DEFAULT_DESIRED = "/etc/localaistack-reconciler/desired-state"
INSTALL_TIMEOUT = 300  # a real venv and pip install: ~15 s with pip's cache, a first download takes longer


# -- sd_notify ----------------------------------------------------------------------------------

@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named in $NOTIFY_SOCKET the way systemd names it."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.settimeout(5)
    directory = tempfile.mkdtemp(prefix="sdn-")  # short: socket paths are limited to 107 bytes
    if request.param == "path":
        address = os.path.join(directory, "notify")
        receiver.bind(address)
    else:
        name = f"reconciler-test-{os.getpid()}-{secrets.token_hex(4)}"
        receiver.bind("\0" + name)
        address = "@" + name
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield receiver
    finally:
        receiver.close()
        shutil.rmtree(directory)


def received(receiver: socket.socket) -> str:
    return receiver.recv(4096).decode()


def nothing_more(receiver: socket.socket) -> bool:
    receiver.setblocking(False)
    try:
        receiver.recv(4096)
    except BlockingIOError:
        return True
    finally:
        receiver.settimeout(5)
    return False


def test_each_notification_arrives_as_one_datagram(notify_socket: socket.socket) -> None:
    assert systemd.ready() is True
    assert received(notify_socket) == "READY=1"
    assert systemd.status("2 workloads\nREADY=1") is True  # a newline must not smuggle in an assignment
    assert received(notify_socket) == "STATUS=2 workloads READY=1"
    assert systemd.stopping() is True
    assert received(notify_socket) == "STOPPING=1"
    assert systemd.notify("WATCHDOG=1") is True
    assert received(notify_socket) == "WATCHDOG=1"
    assert nothing_more(notify_socket)


@pytest.mark.parametrize("address", [None, "", "vsock:2:1234", "relative/notify", "/nonexistent/notify", "@no-such-abstract-socket-x"])
def test_without_a_reachable_notify_socket_every_call_is_a_harmless_no_op(address: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if address is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert systemd.ready() is False
    assert systemd.status("x") is False
    assert systemd.stopping() is False


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    (None, None, None),
    ("30000000", None, 30.0),
    ("1500000", "self", 1.5),
    ("30000000", "other", None),  # inherited from the watched parent: not ours to feed
    ("0", None, None),
    ("-5", None, None),
    ("soon", None, None),
    ("30000000", "not-a-pid", None),
])
def test_watchdog_interval_from_the_environment(usec: str | None, pid: str | None, expected: float | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getppid())}.get(value, value)
            monkeypatch.setenv(name, value)
    assert systemd.watchdog_interval() == expected


def test_watchdog_pings_at_half_the_interval(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    watchdog = systemd.Watchdog.from_environment()
    assert watchdog.due_in(100.0) == 0.0, "the first keep-alive is due at once"
    assert watchdog.ping_if_due(100.0) is True
    assert received(notify_socket) == "WATCHDOG=1"
    assert watchdog.due_in(100.0) == pytest.approx(1.0)
    assert watchdog.ping_if_due(100.9) is False
    assert watchdog.due_in(100.9) == pytest.approx(0.1)
    assert nothing_more(notify_socket)
    assert watchdog.ping_if_due(101.0) is True
    assert received(notify_socket) == "WATCHDOG=1"
    assert watchdog.ping(101.2) is True, "a forced keep-alive (before a long shutdown)"
    assert received(notify_socket) == "WATCHDOG=1"
    assert watchdog.due_in(101.2) == pytest.approx(1.0)


def test_without_a_watchdog_nothing_is_sent_and_the_loop_may_sleep(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process is the watched one
    watchdog = systemd.Watchdog.from_environment()
    assert watchdog.ping_if_due(0.0) is False
    assert watchdog.ping(0.0) is False
    assert watchdog.due_in(0.0) is None
    assert nothing_more(notify_socket)


def test_the_daemon_reports_ready_keeps_the_watchdog_fed_and_says_it_is_stopping(workspace: Workspace) -> None:
    """The acceptance test of the daemon's wiring (reconciler/control/daemon.py calls this module)."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"reconciler-test-{os.getpid()}-{secrets.token_hex(4)}"
    receiver.bind("\0" + name)
    receiver.settimeout(30)
    messages: list[tuple[float, str]] = []

    def until(wanted: str) -> float:
        while True:
            try:
                message = received(receiver)
            except TimeoutError:
                raise AssertionError(f"no {wanted} from the daemon (is reconciler.control.systemd wired into Daemon.run?); "
                                     f"received {[m for _, m in messages]}") from None
            messages.append((time.monotonic(), message))
            if wanted in message.splitlines():
                return messages[-1][0]

    env = os.environ | {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"}  # WATCHDOG=1 every 0.5 s
    try:
        workspace.write("web.yaml", workload_yaml("web"))
        daemon = workspace.start_daemon("--resync", "30", env=env)
        until("READY=1")
        first = until("WATCHDOG=1")
        for _ in range(3):  # the loop wakes for the watchdog, not only for its 30 s resync
            last = until("WATCHDOG=1")
        assert last - first < 3.0, f"keep-alives too far apart: {messages}"
        pid = wait_for(lambda: workspace.pid("web.yaml", "web"), what="web to start")
        leaked = {key for key in psutil.Process(pid).environ() if key.startswith(("NOTIFY_", "WATCHDOG_"))}
        assert not leaked, f"a workload inherited the daemon's systemd variables: {leaked}"

        daemon.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert workspace.stop_daemon() == 0
    finally:
        receiver.close()


# -- the unit and the env file --------------------------------------------------------------------

def read_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: sections of KEY=VALUE where a key may repeat (each adds a value) and a
    trailing backslash continues a line. configparser (strict=False) must accept it too."""
    configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";")).read_string(text)
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not a unit line: {line!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_env(text: str) -> tuple[dict[str, str], set[str]]:
    """The env file's assignments, and the names assigned only in comments (examples)."""
    values = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))
    commented = {match.group(1) for match in re.finditer(r"^#\s*([A-Z_]+)=", text, re.M)}
    return values, commented


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return read_unit((DEPLOY / "reconciler.service").read_text())


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str | None:
    values = unit[section].get(key)
    return values[-1] if values else None  # as systemd: the last assignment wins


def seconds(value: str | None) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|min)?", value or "")
    assert match, f"not a duration this test understands: {value!r}"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_unit_runs_the_daemon_under_notify_with_a_watchdog_and_outlives_nothing_it_started(unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main", "a workload must not be able to report for the daemon"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "KillMode") == "process", "stopping the service must leave workloads running (re-adopted)"
    watchdog, stop = seconds(one(unit, "WatchdogSec")), seconds(one(unit, "TimeoutStopSec"))
    assert watchdog > 0 and stop > 0
    exec_start = one(unit, "ExecStart") or ""
    assert exec_start.startswith("/opt/localaistack-reconciler/venv/bin/reconciler run ${RECONCILER_PATH} ")
    assert "--state-dir ${RECONCILER_STATE_DIR}" in exec_start and exec_start.endswith(" $RECONCILER_ARGS")
    assert one(unit, "EnvironmentFile") == "-/etc/localaistack-reconciler/env"
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


def test_the_unit_is_sandboxed_without_closing_what_the_daemon_needs(unit: dict[str, dict[str, list[str]]]) -> None:
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only",
        "ProtectKernelTunables": "yes", "ProtectKernelLogs": "yes", "RestrictSUIDSGID": "yes",
        "ProtectControlGroups": "no",  # it creates a cgroup per workload under /sys/fs/cgroup
        "Delegate": "yes",  # ... beneath its own cgroup, which systemd must then leave alone
        "PrivateTmp": "no",  # systemd deletes a private /tmp on stop, under workloads that outlive it
        "StateDirectory": "localaistack-reconciler",
        "StateDirectoryMode": "0711",  # workloads, users of their own, pass through to their folders and models
    }.items():
        assert one(unit, key) == value, f"{key}={one(unit, key)}, want {value}"
    # Any of these closes /dev/nvidia* (NVML, GPU workloads) or breaks JIT-compiling workloads.
    for key in ("PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock", "MemoryDenyWriteExecute"):
        assert one(unit, key) in (None, "no"), f"{key}= must stay unset"
    writable = " ".join(unit["Service"].get("ReadWritePaths", [])).split()
    assert "-" + DEFAULT_DESIRED in writable, "status files are written beside each spec"
    assert {"/tmp", "/var/tmp"} <= set(writable)
    environment = dict(value.split("=", 1) for value in unit["Service"]["Environment"])
    assert environment["RECONCILER_PATH"] == DEFAULT_DESIRED
    assert environment["RECONCILER_STATE_DIR"] == "/var/lib/" + (one(unit, "StateDirectory") or "")


def test_the_env_file_names_the_folders_the_unit_lets_it_write() -> None:
    values, commented = read_env((DEPLOY / "reconciler.env").read_text())
    assert values == {"RECONCILER_PATH": DEFAULT_DESIRED, "RECONCILER_STATE_DIR": "/var/lib/localaistack-reconciler",
                      "RECONCILER_ARGS": ""}
    assert "DOCKER_HOST" in commented


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd); the unit is unverified")
    # verify also checks that ExecStart exists: point it at a real executable, as install.sh makes it one
    text = (DEPLOY / "reconciler.service").read_text().replace(
        "/opt/localaistack-reconciler/venv/bin/reconciler", shutil.which("true") or "/bin/true")
    (tmp_path / UNIT).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / UNIT)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if UNIT in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# -- install.sh / uninstall.sh --------------------------------------------------------------------

def script(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a deploy script with no DESTDIR leaking in; the pip arguments of RECONCILER_TEST_PIP_ARGS
    (e.g. "--no-index --find-links DIR" on an offline machine) go to install.sh."""
    env = {key: value for key, value in os.environ.items() if key != "DESTDIR"}
    pip_args = os.environ.get("RECONCILER_TEST_PIP_ARGS") if name == "install.sh" else None
    extra = ("--pip-args", pip_args) if pip_args else ()
    result = subprocess.run(["bash", str(DEPLOY / name), *args, *extra],
                            capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
    assert result.returncode == 0, f"{name} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_scripts_parse_and_explain_themselves() -> None:
    for name in ("install.sh", "uninstall.sh"):
        subprocess.run(["bash", "-n", str(DEPLOY / name)], check=True)
        assert "usage: deploy/" + name in script(name, "--help").stdout
        assert os.access(DEPLOY / name, os.X_OK), f"{name} is not executable"
    bad = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--prefix", "relative"], capture_output=True, text=True)
    assert bad.returncode != 0 and "absolute" in bad.stderr


def test_install_into_a_root_then_uninstall_keeps_the_configuration(tmp_path: Path) -> None:
    root, prefix = tmp_path / "root", "/srv/lar"
    build_existed = (REPO / "build").exists()
    venv, etc = root / prefix.lstrip("/") / "venv", root / "etc/localaistack-reconciler"
    unit_file = root / "etc/systemd/system" / UNIT

    output = script("install.sh", "--root", str(root), "--prefix", prefix, "--no-systemctl", timeout=INSTALL_TIMEOUT).stdout
    assert "installed" in output
    shipped = (DEPLOY / "reconciler.service").read_text()
    assert unit_file.read_text() == shipped.replace("/opt/localaistack-reconciler/", prefix + "/")
    assert one(read_unit(unit_file.read_text()), "ExecStart").startswith(f"{prefix}/venv/bin/reconciler run ")  # type: ignore[union-attr]
    assert (etc / "env").read_text() == (DEPLOY / "reconciler.env").read_text()
    assert (etc / "desired-state").is_dir() and not any((etc / "desired-state").iterdir())
    for page in ("README.md", "docs/guides/service.md"):
        assert (root / prefix.lstrip("/") / page).is_file(), "the unit's Documentation="
    # the venv runs the installed copy, not this checkout
    where = subprocess.run([str(venv / "bin/python"), "-c", "import reconciler.control.systemd as m; print(m.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), where
    assert "run" in subprocess.run([str(venv / "bin/reconciler"), "--help"], capture_output=True, text=True, check=True).stdout
    assert (REPO / "build").exists() == build_existed, "the build must not write into the checkout"

    # again: the user's env file stays, our unit is restored, the venv is reused
    (etc / "env").write_text("RECONCILER_ARGS=--resync 60\n")
    unit_file.write_text("# edited by hand\n")
    output = script("install.sh", "--root", str(root), "--prefix", prefix, timeout=INSTALL_TIMEOUT).stdout
    assert "kept" in output
    assert (etc / "env").read_text() == "RECONCILER_ARGS=--resync 60\n"
    assert unit_file.read_text() == shipped.replace("/opt/localaistack-reconciler/", prefix + "/")

    (etc / "desired-state/web.yaml").write_text(workload_yaml("web"))
    for _ in range(2):  # idempotent
        script("uninstall.sh", "--root", str(root), "--prefix", prefix, "--no-systemctl")
        assert not unit_file.exists() and not venv.exists() and not (root / prefix.lstrip("/")).exists()
        assert (etc / "env").read_text() == "RECONCILER_ARGS=--resync 60\n"
        assert (etc / "desired-state/web.yaml").is_file()

    (root / "var/lib/localaistack-reconciler").mkdir(parents=True)
    output = script("uninstall.sh", "--root", str(root), "--prefix", prefix, "--purge").stdout
    assert not (etc / "env").exists() and not (root / "var/lib/localaistack-reconciler").exists()
    assert (etc / "desired-state/web.yaml").is_file(), "--purge never removes specs"
    assert "kept" in output and "no longer tracked" in output
