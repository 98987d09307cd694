"""Shared fixtures for integration tests: a desired-state folder, the real CLI and the real daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import yaml

from reconciler.drive.process import NAME_VARIABLE, OWNER_VARIABLE, owner_id

if TYPE_CHECKING:
    from tests.artifact_server import ArtifactServer
    from tests.docker_engine import EngineUnderTest

PYTHON = sys.executable
SLEEPER = "import sys, time\nprint('up', sys.argv[1:], flush=True)\nwhile True: time.sleep(1)"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def workload_yaml(name: str, code: str = SLEEPER, args: tuple[str, ...] = (), **spec: Any) -> str:
    body = {
        "apiVersion": "localaistack.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {"command": [PYTHON, "-c", code], "args": list(args), **spec},
    }
    return yaml.safe_dump(body, sort_keys=False)


POLICY_YAML = textwrap.dedent(f"""\
    apiVersion: localaistack.dev/v1alpha1
    kind: Policy
    metadata:
      name: test-host
    spec:
      native:
        trustedExecutables:
          - executable: {PYTHON}
    """)


def searchable_by_all(path: Path) -> None:
    """Every folder from / down to `path` searchable (not listable) by every user, as on a host where a root reconciler
    starts workloads as users of their own: they must reach the interpreter and the files they are given."""
    for folder in [*reversed(path.parents), path]:
        mode = folder.stat().st_mode
        if os.geteuid() == 0 and not mode & 0o001:
            folder.chmod((mode & 0o7777) | 0o011)


class Workspace:
    def __init__(self, root: Path) -> None:
        searchable_by_all(root)  # its workloads run as users of their own
        self.desired = root / "desired"
        self.state = root / "state"
        self.desired.mkdir()
        self._daemon: subprocess.Popen[str] | None = None
        self.daemon_log = root / "daemon.log"

    # -- files ------------------------------------------------------------------------------

    def write(self, name: str, text: str) -> Path:
        """Write a spec the way careful editors do: temp file, then rename into place."""
        path = self.desired / name
        temp = self.desired / f".{name}.swp"
        temp.write_text(text)
        os.replace(temp, path)
        return path

    def status(self, spec_file: str) -> dict[str, Any] | None:
        path = self.desired / (spec_file.rsplit(".", 1)[0] + ".status.yaml")
        try:
            return yaml.safe_load(path.read_text())
        except FileNotFoundError:
            return None

    def resource_status(self, spec_file: str, name: str) -> dict[str, Any] | None:
        report = self.status(spec_file) or {}
        return next((r for r in report.get("resources", []) if r["name"] == name), None)

    def decision_record(self, spec_file: str, name: str) -> dict[str, Any] | None:
        path = self.desired / (spec_file.rsplit(".", 1)[0] + ".decisions.yaml")
        report = yaml.safe_load(path.read_text()) if path.exists() else {}
        return next((r["decisionRecord"] for r in report.get("resources", []) if r["name"] == name), None)

    def condition(self, spec_file: str, name: str, type_: str = "Ready") -> dict[str, Any] | None:
        status = self.resource_status(spec_file, name) or {}
        return next((c for c in status.get("conditions", []) if c["type"] == type_), None)

    def evidence(self, spec_file: str) -> list[dict[str, Any]]:
        path = self.desired / (spec_file.rsplit(".", 1)[0] + ".evidence.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def actions(self, spec_file: str) -> list[str]:
        """The actions carried out, in order, from the evidence log (decisions are the other lines)."""
        return [record["action"] for record in self.evidence(spec_file) if record["event"] == "action"]

    def pid(self, spec_file: str, name: str) -> int | None:
        return (self.resource_status(spec_file, name) or {}).get("pid")

    # -- commands ---------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [PYTHON, "-m", "reconciler", *args]
        if args and args[0] in {"plan", "apply", "run", "down", "status", "host"}:
            command += [str(self.desired), "--state-dir", str(self.state)]
        elif args and args[0] in {"describe", "logs", "approve", "deny", "rollback"}:  # NAME first, then the folder
            command = [*command[:5], str(self.desired), "--state-dir", str(self.state), *command[5:]]
        elif args and args[0] == "validate":
            command += [str(self.desired)]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)

    def start_daemon(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log = self.daemon_log.open("a")
        self._daemon = subprocess.Popen(
            [PYTHON, "-m", "reconciler", "--log-level", "DEBUG", "run", str(self.desired), "--state-dir", str(self.state), *extra],
            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env,
        )
        return self._daemon

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int | None:
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return None
        daemon.send_signal(sig)
        return daemon.wait(timeout=30)

    def owned_processes(self, name: str | None = None) -> list[psutil.Process]:
        """Session leaders started for this workspace's workloads (found by their marker variable)."""
        found = []
        for process in psutil.process_iter():
            try:
                env = process.environ()
                if env.get(OWNER_VARIABLE) != owner_id(self.state) or os.getsid(process.pid) != process.pid:
                    continue
                if name is None or env.get(NAME_VARIABLE) == name:
                    found.append(process)
            except (psutil.Error, ProcessLookupError):
                continue
        return found

    def cleanup(self) -> None:
        self.stop_daemon(signal.SIGKILL)
        self.cli("down")
        for process in self.owned_processes():
            process.kill()


@pytest.fixture(scope="session", autouse=True)
def interpreter_reachable() -> None:
    """pyenv's Python lives under /root (mode 0700 here): a workload's user could not even run it."""
    searchable_by_all(Path(os.path.realpath(PYTHON)).parent)


def pytest_configure(config: pytest.Config) -> None:
    """pytest keeps tmp_path under /tmp/pytest-of-root, which every session started as root resets to 0700: a workload
    running as a user of its own could not reach what a test gives it there. This session's folder is its own."""
    if os.geteuid() == 0 and not config.option.basetemp and not hasattr(config, "workerinput"):
        config.option.basetemp = str(Path(tempfile.mkdtemp(prefix="reconciler-tests-")) / "tmp")
        Path(config.option.basetemp).parent.chmod(0o711)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    folder = Path(session.config.option.basetemp or "/nonexistent").parent
    if exitstatus == 0 and folder.name.startswith("reconciler-tests-"):
        shutil.rmtree(folder, ignore_errors=True)  # a failed session's is kept to look into


@pytest.fixture(autouse=True)
def tmp_path_reachable(request: pytest.FixtureRequest) -> None:
    """pytest makes tmp_path 0700: a workload's user could not reach what a test gives it there."""
    if "tmp_path" in request.fixturenames:
        searchable_by_all(request.getfixturevalue("tmp_path"))


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    space = Workspace(tmp_path)
    space.write("policy.yaml", POLICY_YAML)
    yield space
    space.cleanup()


@pytest.fixture
def server() -> Iterator["ArtifactServer"]:
    """A loopback HTTP server for model artifacts (ranges, cuts, failures on demand)."""
    from tests.artifact_server import ArtifactServer

    serving = ArtifactServer().start()
    yield serving
    serving.stop()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator["EngineUnderTest"]:
    """A reachable Docker engine with the busybox test image: RECONCILER_TEST_DOCKER_HOST's, else a private dockerd.

    Its address is exported as DOCKER_HOST for the rest of the session, so every reconciler the tests start uses it.
    """
    from tests.docker_engine import EngineUnderTest, PrivateEngine, import_image

    given = os.environ.get("RECONCILER_TEST_DOCKER_HOST")
    engine = None if given else PrivateEngine()
    if engine is not None:
        engine.start()
    address = given or engine.address  # type: ignore[union-attr]
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = address
    try:
        import_image(address)
        yield EngineUnderTest(address, engine)
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        if engine is not None:
            engine.destroy()
