"""Container scenarios 5-7: the reconciler's one-shot `python -m reconciler apply DIR --state-dir S` against
`docker-compose up -d` (Compose v1, which also exits when done), both on one private dockerd and one offline
busybox image (tests.docker_engine), with DOCKER_HOST pointing at that engine for both.

The stacks are equivalent: 20 services running busybox `httpd -f -p 8080 -h /www`, each publishing one distinct
free loopback port (the reconciler's stack and Compose's use disjoint port sets, so both can be up at once),
a 32 MiB memory limit, no health check (Compose has none unless asked; the reconciler's workloads set none).
The Compose file is what a user would write, plus `init: true`: without it httpd is PID 1, ignores SIGTERM,
and every Compose stop/recreate waits its 10 s stop timeout. The reconciler adds least-privilege settings
the Compose file does not (cap_drop ALL, no-new-privileges, read-only rootfs with a tmpfs /tmp, non-root user,
pids limit, init, bounded logs) and writes status and evidence files on each pass.

What is timed, per repetition, is the wall time of one CLI process (interpreter start-up included, for
both tools) until it exits 0; preparing files, `down`, and the check that 20 containers run are not.
Both tools reach the engine through a counting proxy (tests/engine_proxy.py): the API calls of each timed run, by
endpoint, go into results.json and their total into the table.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import yaml

from tests.engine_proxy import CountingProxy
from bench.harness import Scenario
from tests.docker_engine import TEST_IMAGE, PrivateEngine, import_image

SERVICES = 20
CHANGED = 7  # the service whose env alternates in "one of 20 changed"
HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/www"]
PEER_PROJECT = "laisbench"
OWNER_LABEL = "dev.localaistack.owner"
COMPOSE_LABEL = "com.docker.compose.project"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class _Bench:
    """The shared engine and work folders; started by the first scenario's setup, stopped at the end."""

    engine: PrivateEngine | None = None
    proxy: CountingProxy | None = None  # what both tools are pointed at
    calls: dict[str, int] = field(default_factory=dict)  # the engine calls of the last timed run
    work: Path | None = None
    ports: list[int] = field(default_factory=list)  # SERVICES for ours, then SERVICES for the peer
    variant: dict[str, str] = field(default_factory=lambda: {"ours": "a", "peer": "a"})

    @property
    def desired(self) -> Path:
        assert self.work is not None
        return self.work / "ours" / "desired"

    @property
    def state(self) -> Path:
        assert self.work is not None
        return self.work / "ours" / "state"

    @property
    def compose_file(self) -> Path:
        assert self.work is not None
        return self.work / "peer" / "docker-compose.yml"


_bench = _Bench()


def _start() -> None:
    """Start the private dockerd and import the image, once; atexit (and SIGTERM) make sure it goes away."""
    if _bench.engine is not None:
        return
    atexit.register(_shutdown)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so atexit runs on a plain `kill`
    _bench.engine = PrivateEngine()
    _bench.work = Path(tempfile.mkdtemp(prefix="lais-bench-containers-"))
    _bench.engine.start()
    import_image(_bench.engine.address, TEST_IMAGE)
    _bench.proxy = CountingProxy(_bench.work / "proxy.sock", _bench.engine.address.removeprefix("unix://"))
    _bench.proxy.start()
    _bench.ports = _free_ports(2 * SERVICES)
    _write_ours()
    _write_peer()


def _shutdown() -> None:
    """Remove every container and network, stop and destroy the engine, delete the work folder; safe to call twice.
    A network left to the engine's end leaves its bridge on the host, holding one of the engines' default address
    pools: about 30 such (Compose's laisbench_default of earlier runs) and Compose could make no network at all."""
    engine, _bench.engine = _bench.engine, None
    if _bench.proxy is not None:
        _bench.proxy.close()
        _bench.proxy = None
    if engine is not None:
        try:
            client = docker.DockerClient(base_url=engine.address, version="auto", timeout=30)
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.networks.prune()
        except Exception as error:  # noqa: BLE001 - destroy the engine regardless
            print(f"bench.containers: cleaning up containers and networks: {error}", file=sys.stderr)
        finally:
            engine.destroy()
    if _bench.work is not None:
        shutil.rmtree(_bench.work, ignore_errors=True)
        _bench.work = None


def _free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:  # all held at once, so the ports are distinct
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _env_of(index: int, tool: str) -> dict[str, str]:
    return {"BENCH_VARIANT": _bench.variant[tool] if index == CHANGED else "a"}


def _write_ours() -> None:
    """The reconciler's desired state: one Workload file per service, and a Policy allowing the image and bridge."""
    _bench.desired.mkdir(parents=True, exist_ok=True)
    policy = {"apiVersion": "localaistack.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "bench"},
              "spec": {"containers": {"images": ["reconciler-test/*"], "networks": ["bridge"]}}}
    (_bench.desired / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    for index in range(SERVICES):
        spec = {"runtime": "container", "image": TEST_IMAGE, "command": HTTPD, "env": _env_of(index, "ours"),
                "ports": [{"containerPort": 8080, "hostPort": _bench.ports[index]}], "resources": {"memory": "32Mi"}}
        body = {"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload", "metadata": {"name": f"svc-{index:02d}"},
                "spec": spec}
        (_bench.desired / f"svc-{index:02d}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))


def _write_peer() -> None:
    """The equivalent Compose file (format 2.4: mem_limit and init are honoured without --compatibility)."""
    _bench.compose_file.parent.mkdir(parents=True, exist_ok=True)
    services = {f"svc-{index:02d}": {
        "image": TEST_IMAGE, "command": HTTPD, "init": True, "mem_limit": "32m", "environment": _env_of(index, "peer"),
        "ports": [f"127.0.0.1:{_bench.ports[SERVICES + index]}:8080"],
    } for index in range(SERVICES)}
    _bench.compose_file.write_text(yaml.safe_dump({"version": "2.4", "services": services}, sort_keys=False))


def _timed(command: list[str], counted: bool = True, first: Callable[[], None] = lambda: None) -> float:
    """Seconds `command` took to exit 0, with DOCKER_HOST set to the private engine (through the counting proxy);
    `first`: timed and counted too, before the command (a spec edit a running daemon sees at once)."""
    assert _bench.proxy is not None
    environment = {**os.environ, "DOCKER_HOST": _bench.proxy.address}
    _bench.proxy.reset()
    began = time.perf_counter()
    first()
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - began
    calls = dict(_bench.proxy.reset())
    if counted:  # the run a scenario measures, not its untimed setup or clean-up
        _bench.calls = calls
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def _ours(verb: str, counted: bool = True, first: Callable[[], None] = lambda: None) -> float:
    return _timed([sys.executable, "-m", "reconciler", verb, str(_bench.desired), "--state-dir", str(_bench.state)],
                  counted, first)


def _peer(*arguments: str, counted: bool = True, first: Callable[[], None] = lambda: None) -> float:
    return _timed(["docker-compose", "-p", PEER_PROJECT, "-f", str(_bench.compose_file), *arguments], counted, first)


def _running(label: str) -> None:
    """Untimed check that the tool converged: exactly SERVICES running containers carry its label."""
    assert _bench.engine is not None
    client = docker.DockerClient(base_url=_bench.engine.address, version="auto")
    found = client.containers.list(filters={"label": label, "status": "running"})
    if len(found) != SERVICES:
        raise RuntimeError(f"{label}: {len(found)} running containers, expected {SERVICES}")


def _ours_label() -> str:
    from reconciler.drive.process import owner_id
    return f"{OWNER_LABEL}={owner_id(_bench.state)}"


def _ours_down() -> None:
    if _bench.state.exists():
        _ours("down", counted=False)
        shutil.rmtree(_bench.state)  # cold means no state directory either


def _both_down() -> None:
    _start()
    _ours_down()
    if shutil.which("docker-compose"):
        _peer("down", counted=False)


def _both_up() -> None:
    _start()
    _ours("apply", counted=False)
    if shutil.which("docker-compose"):
        _peer("up", "-d", counted=False)


# -- 5: cold converge -----------------------------------------------------------------------------------------

def cold_ours() -> float:
    """Timed: `reconciler apply` from no containers and no state directory until all 20 run. Then, untimed,
    `reconciler down` and the state directory removed."""
    seconds = _ours("apply")
    _running(_ours_label())
    _ours_down()
    return seconds


def cold_peer() -> float:
    """Timed: `docker-compose up -d` from no containers of its project. Then, untimed, `docker-compose down`."""
    seconds = _peer("up", "-d")
    _running(f"{COMPOSE_LABEL}={PEER_PROJECT}")
    _peer("down", counted=False)
    return seconds


# -- 6: no-op converge ----------------------------------------------------------------------------------------

def noop_ours() -> float:
    """Timed: `reconciler apply` with all 20 already converged (both stacks up, nothing to change)."""
    seconds = _ours("apply")
    _running(_ours_label())
    return seconds


def noop_peer() -> float:
    """Timed: `docker-compose up -d` with all 20 already up to date."""
    seconds = _peer("up", "-d")
    _running(f"{COMPOSE_LABEL}={PEER_PROJECT}")
    return seconds


_daemon: dict[str, object] = {}


def noop_daemon_pass() -> float:
    """Timed: what the running daemon does on a resync with all 20 converged: a new snapshot of the folder
    and a reconcile of every resource, in process (no interpreter start-up: a daemon has already paid it)."""
    from reconciler.control.reconciler import Reconciler

    assert _bench.proxy is not None
    os.environ["DOCKER_HOST"] = _bench.proxy.address
    reconciler = _daemon.get("reconciler")
    if reconciler is None:
        # with an exit callback, as the daemon's: its driver then hears the engine's events
        reconciler = _daemon["reconciler"] = Reconciler(_bench.desired, _bench.state, on_exit=lambda name: None)
    assert isinstance(reconciler, Reconciler)
    _bench.proxy.reset()
    began = time.perf_counter()
    reconciler.refresh()
    for key in reconciler.keys():
        reconciler.reconcile(key)
    elapsed = time.perf_counter() - began
    _bench.calls = dict(_bench.proxy.reset())
    _running(_ours_label())
    return elapsed


# -- 7: one of 20 changed -------------------------------------------------------------------------------------

def _flip(tool: str) -> None:
    _bench.variant[tool] = "b" if _bench.variant[tool] == "a" else "a"
    (_write_ours if tool == "ours" else _write_peer)()


def changed_ours() -> float:
    """Untimed: svc-07's BENCH_VARIANT flips between a and b. Timed: `reconciler apply` recreating it
    (stop, remove, create, start) while 19 stay as they are."""
    _flip("ours")
    seconds = _ours("apply")
    _running(_ours_label())
    return seconds


def changed_peer() -> float:
    """Untimed: svc-07's BENCH_VARIANT flips. Timed: `docker-compose up -d` recreating it, 19 up to date."""
    _flip("peer")
    seconds = _peer("up", "-d")
    _running(f"{COMPOSE_LABEL}={PEER_PROJECT}")
    return seconds


def noop_asked_ours() -> float:
    """Timed: `reconciler apply` with all 20 converged and the daemon running: the daemon runs the pass (its engine
    calls, through the proxy, are the run's)."""
    seconds = _ours("apply")
    _running(_ours_label())
    return seconds


def changed_asked_ours() -> float:
    """Timed: from svc-07's spec written (the daemon watching the folder sees it) through `reconciler apply` exiting
    once the daemon's pass recreated it."""
    seconds = _ours("apply", first=lambda: _flip("ours"))
    _running(_ours_label())
    return seconds


def changed_asked_peer() -> float:
    """Timed: from svc-07's Compose entry written through `docker-compose up -d` recreating it."""
    seconds = _peer("up", "-d", first=lambda: _flip("peer"))
    _running(f"{COMPOSE_LABEL}={PEER_PROJECT}")
    return seconds


# -- 8: commands that answer at once ----------------------------------------------------------------------------

def _command(*arguments: str) -> Callable[[], float]:
    """Timed: one `reconciler ARGUMENTS` process; FOLDER and STATE stand for the converged 20's."""
    def once() -> float:
        places = {"FOLDER": str(_bench.desired), "STATE": str(_bench.state)}
        return _timed([sys.executable, "-m", "reconciler", *(places.get(argument, argument) for argument in arguments)])
    return once


def docker_ps() -> float:
    """Timed: `docker ps` listing the same engine's 40 running containers: the command a user compares with."""
    return _timed(["docker", "ps"])


def _quick_commands(repetitions: int) -> list[Scenario]:
    commands = {"--help": ("--help",), "status": ("status", "FOLDER", "--state-dir", "STATE"),
                "describe": ("describe", "svc-00", "FOLDER", "--state-dir", "STATE"),
                "logs": ("logs", "svc-00", "FOLDER", "--state-dir", "STATE", "--tail", "5"),
                f"validate ({SERVICES} specs)": ("validate", "FOLDER")}
    rows = [Scenario(f"`reconciler {label}`", "s", _command(*arguments), docker_ps, "docker ps", "<= 0.15 s",
                     repetitions, setup=_both_up, calls=_calls) for label, arguments in commands.items()]
    answered = [Scenario(f"`reconciler {label}`, daemon running", "s", _command(*commands[label]), docker_ps, "docker ps",
                         "<= 0.15 s", repetitions, setup=_daemon_up, teardown=_daemon_down, calls=_calls)
                for label in ("status", "describe", "logs")]  # validate asks the folder's default state directory's
    rows += answered
    floor = Scenario("`python -c pass` (the interpreter's floor)", "s", lambda: _timed([sys.executable, "-c", "pass"]),
                     docker_ps, "docker ps", "-", repetitions, setup=_both_up, calls=_calls)
    return [*rows, floor]


def _daemon_up(counted: bool = False) -> None:
    """`reconciler run` over the converged 20 until it answers on its query socket, talking to the engine directly
    (its calls are not the command's) or, `counted`, through the proxy (it runs the pass `apply` asks for)."""
    from reconciler.base.private_socket import socket_path

    _both_up()
    assert _bench.engine is not None and _bench.work is not None and _bench.proxy is not None
    log = (_bench.work / "daemon.log").open("a")
    _daemon["process"] = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", str(_bench.desired), "--state-dir", str(_bench.state)], cwd=REPO,
        env={**os.environ, "DOCKER_HOST": _bench.proxy.address if counted else _bench.engine.address}, stdout=log,
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not socket_path(_bench.state).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon never answered; see {_bench.work / 'daemon.log'}")
        time.sleep(0.1)


def _daemon_down() -> None:
    process = _daemon.pop("process", None)
    if isinstance(process, subprocess.Popen):
        process.terminate()
        process.wait(timeout=60)


def _calls() -> dict[str, int]:
    return _bench.calls


def _compose_version() -> str | None:
    if shutil.which("docker-compose") is None:
        return None
    done = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def scenarios(quick: bool = False) -> list[Scenario]:
    """Scenarios 5-7. The engine starts in the first setup that runs and stops in the last teardown (atexit
    as a backstop), so `--only` on any one of them works alone."""
    version = _compose_version()
    name = f"docker-compose {version} up -d" if version else ""
    missing = "" if version else "docker-compose not installed: apt-get install docker-compose"
    repetitions = 3 if quick else 10

    def peer(function: Callable[[], float]) -> Callable[[], float] | None:
        return function if version else None

    return [
        Scenario(f"cold converge of {SERVICES} container services", "s", cold_ours, peer(cold_peer), name,
                 "ratio <= 0.8", repetitions, setup=_both_down, reference=missing, calls=_calls),
        Scenario(f"no-op converge of the same {SERVICES} containers", "s", noop_ours, peer(noop_peer), name,
                 "ratio <= 0.5", repetitions, setup=_both_up, reference=missing, calls=_calls),
        Scenario(f"no-op pass of the running daemon over the same {SERVICES} (in process)", "s", noop_daemon_pass,
                 peer(noop_peer), name, "ratio <= 0.1", repetitions, setup=_both_up, reference=missing, calls=_calls),
        *_quick_commands(repetitions),
        Scenario(f"no-op converge of the same {SERVICES} containers, daemon running", "s", noop_asked_ours,
                 peer(noop_peer), name, "ratio <= 0.5", repetitions, setup=lambda: _daemon_up(counted=True),
                 teardown=_daemon_down, reference=missing, calls=_calls),
        Scenario(f"one of {SERVICES} containers changed -> converged, daemon running (from the edit)", "s",
                 changed_asked_ours, peer(changed_asked_peer), name, "ratio <= 0.5", repetitions,
                 setup=lambda: _daemon_up(counted=True), teardown=_daemon_down, reference=missing, calls=_calls),
        Scenario(f"one of {SERVICES} containers changed -> converged", "s", changed_ours, peer(changed_peer), name,
                 "ratio <= 0.5", repetitions, setup=_both_up, teardown=_shutdown, reference=missing, calls=_calls),
    ]
