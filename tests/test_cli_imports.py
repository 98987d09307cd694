"""Commands that answer at once import only what they use: `--help` lists every command without the models, the
engine client or the watchers, and `status` leaves the daemon's machinery (watchers, gateway, metrics) alone.
Checked on the module list of a real `python -X importtime -m reconciler ...` process, not on timings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pydantic", "docker", "watchdog", "aiohttp", "pynvml", "psutil", "yaml", "requests")
DAEMON_ONLY = ("watchdog", "aiohttp", "asyncio", "prometheus_client", "reconciler.control.daemon", "reconciler.gateway.server")
COMMANDS = ("validate", "plan", "apply", "down", "schemas", "run", "sync", "status", "host", "describe", "logs",
            "approve", "deny", "rollback", "export", "verify", "forget", "models")


def imported(*arguments: str, cwd: Path) -> set[str]:
    """Every module a `reconciler ARGUMENTS` process imported (its -X importtime lines on stderr)."""
    return run_imported(*arguments, cwd=cwd)[1]


def run_imported(*arguments: str, cwd: Path) -> tuple[str, set[str]]:
    """What a `reconciler ARGUMENTS` process printed, and every module it imported, on a host without a container
    engine (the session's test engine, once started, is exported as DOCKER_HOST: with one, the engine's client loads
    as it should)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "reconciler", *arguments], cwd=cwd,
                          env={**os.environ, "DOCKER_HOST": f"unix://{cwd}/no-engine.sock"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1, 2), done.stderr[-2000:]
    return done.stdout, {match.group(1)
                         for match in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", done.stderr, re.M)}


def top_level(modules: set[str]) -> set[str]:
    return {module.split(".")[0] for module in modules}


def test_help_imports_no_heavy_library(tmp_path: Path) -> None:
    modules = imported("--help", cwd=tmp_path)
    assert "click" in modules  # the listing itself ran
    assert top_level(modules) & set(HEAVY) == set()


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_imports_no_heavy_library(command: str, tmp_path: Path) -> None:
    assert top_level(imported(command, "--help", cwd=tmp_path)) & set(HEAVY) == set()


def test_status_imports_none_of_the_daemon(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "hello.yaml").write_text(
        "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: hello}\n"
        "spec: {runtime: native, command: [sleep, '60']}\n")
    modules = imported("status", str(folder), "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert "reconciler.control.reconciler" in modules  # status really read the folder and the state
    assert {module for module in DAEMON_ONLY if module in modules or module in top_level(modules)} == set()
    # gguf loads numpy (0.1 s): only a GGUF model's header read needs it
    assert top_level(modules) & {"gguf", "numpy"} == set()
    assert "reconciler.control.gitops" not in modules  # the revision in force is only written, never read here
    # an HTTP probe's client (with ssl and email), a file:// source's path and a GitOps checkout's archive are
    # asked where they are used: status reads, it never probes, fetches or materializes
    assert {"http.client", "urllib.request", "tarfile"} & modules == set()
    assert top_level(imported("plan", str(folder), "--state-dir", str(tmp_path / "state"), cwd=tmp_path)) & \
        {"gguf", "numpy"} == set()



def test_a_host_without_an_nvidia_driver_costs_no_nvml_binding(tmp_path: Path) -> None:
    """Where the driver's NVML library does not load, `status` says so without importing pynvml (8-16 ms), in the words
    pynvml would use."""
    import ctypes

    from reconciler.observe.gpus import NVML_LIBRARY

    try:
        ctypes.CDLL(NVML_LIBRARY)
        pytest.skip("this host has an NVIDIA driver: its GPUs are read through pynvml")
    except OSError:
        pass
    folder = tmp_path / "desired"
    folder.mkdir()
    modules = imported("status", str(folder), "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert "reconciler.observe.gpus" in modules and "pynvml" not in modules
    import pynvml

    from reconciler.observe.gpus import read_inventory

    with pytest.raises(pynvml.NVMLError) as said:  # the reason is pynvml's own: the host profile reads as it did
        pynvml.nvmlInit()
    assert read_inventory().reason == f"NVML unavailable: {said.value} (no NVIDIA driver on this host?)"


def test_apply_imports_none_of_the_daemon_nor_gitops(tmp_path: Path) -> None:
    """A one-shot apply reads its folder's revision with git alone: GitOps' follower and models are the daemon's."""
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "policy.yaml").write_text(
        "apiVersion: localaistack.dev/v1alpha1\nkind: Policy\nmetadata: {name: home}\nspec: {}\n")
    modules = imported("apply", str(folder), "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert "reconciler.control.reconciler" in modules and "reconciler.observe.git" in modules  # it applied
    assert {module for module in DAEMON_ONLY if module in modules or module in top_level(modules)} == set()
    assert "reconciler.control.gitops" not in modules


@pytest.mark.parametrize("command,module", [("status", "views"), ("logs", "views"), ("validate", "passes"),
                                            ("approve", "answers")])
def test_a_command_imports_no_other_commands_module(command: str, module: str, tmp_path: Path) -> None:
    """What a command asks of a running daemon costs click and its own module: not the other commands'."""
    listing = ("import sys\nfrom reconciler.cli import main\n"
               f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", listing], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    modules = set(done.stdout.splitlines()[-1].split()) if done.returncode == 0 else set()  # after the help text
    others = {f"reconciler.cli.{other}" for other in ("passes", "daemon", "views", "answers", "evidence", "models")}
    assert modules & others == {f"reconciler.cli.{module}"}, done.stderr[-2000:]


def test_logs_of_a_native_workload_imports_no_heavy_library(tmp_path: Path) -> None:
    """A native workload's log is a file of the log store: printing it needs no models and no engine client."""
    state = tmp_path / "state"
    (state / "processes").mkdir(parents=True)
    (state / "logs").mkdir()
    (state / "processes" / "hello.json").write_text("{}")
    (state / "logs" / "hello.log").write_text("first\nlast\n")
    printed, modules = run_imported("logs", "workload/hello", str(tmp_path), "--state-dir", str(state), "--tail", "1",
                                    cwd=tmp_path)
    assert printed == "last\n"
    assert top_level(modules) & set(HEAVY) == set()


def test_logs_of_a_container_workload_loads_no_models(tmp_path: Path) -> None:
    """A container's output is found by the labels this state directory's containers carry: neither the folder's specs
    nor the launch label's model are loaded to ask the engine for it (here there is none: the log store answers)."""
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "talk.yaml").write_text("kind: Workload\nmetadata: {name: talk\n")
    _, modules = run_imported("logs", "talk", str(folder), "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert "reconciler.observe.docker_engine" in modules  # it asked for the engine
    assert top_level(modules) & {"pydantic", "yaml"} == set()


@pytest.mark.parametrize("command,collects", [(["validate"], "False 0"), (["status"], "False 0"), (["apply"], "True"),
                                              (["apply", "--wait", "--timeout", "1"], "True"), (["down"], "True 0")])
def test_one_shot_commands_leave_the_garbage_collector_off(command: list[str], collects: str, tmp_path: Path) -> None:
    """Its passes over what the imports create free next to nothing in a command that does one bounded piece of work
    and exits; one that runs on keeps it. apply may run long (a model's download): it collects again once the
    reconciler is open, over what it makes from then on only (what came before is frozen)."""
    folder = tmp_path / "desired"
    folder.mkdir()
    telling = ("import atexit, gc, sys\nfrom reconciler.cli import main\n"
               "atexit.register(lambda: print('collector', gc.isenabled(), gc.get_freeze_count(), file=sys.stderr))\n"
               f"main({[*command, str(folder)]!r} + ([] if {command[0]!r} == 'validate' else "
               f"['--state-dir', {str(tmp_path / 'state')!r}]), prog_name='reconciler')")
    done = subprocess.run([sys.executable, "-c", telling], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RECONCILER_ASK_DAEMON": "0"})
    said = next((line.split()[1:] for line in done.stderr.splitlines() if line.startswith("collector ")), None)
    assert said is not None, done.stderr[-2000:]
    enabled, frozen = said
    assert enabled == collects.split()[0] and (frozen == "0") == (collects.split()[1:] == ["0"]), said


ENGINE_CLIENT = ("docker", "requests", "urllib3")


@pytest.mark.parametrize("command", ["status", "plan", "apply"])
def test_a_host_without_a_container_engine_costs_no_engine_client(command: str, tmp_path: Path) -> None:
    """No socket where DOCKER_HOST points says the engine is not running: the SDK (and requests, urllib3 with it) is
    not imported to be told so, and a workload that asks for a container still says why it cannot run."""
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "web.yaml").write_text(
        "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: web}\n"
        "spec: {runtime: container, image: 'nginx:1.27'}\n")
    (folder / "hello.yaml").write_text(
        "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: hello}\n"
        "spec: {runtime: native, command: [sleep, '60']}\n")
    absent = tmp_path / "no-engine.sock"
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "reconciler", command, str(folder), "--state-dir",
                           str(tmp_path / "state")], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DOCKER_HOST": f"unix://{absent}", "RECONCILER_ASK_DAEMON": "0"})
    modules = {match.group(1) for match in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", done.stderr, re.M)}
    assert "reconciler.drive.containers" in modules  # the container driver was there and asked
    if command == "status":
        assert f"Docker engine at unix://{absent} is not reachable: no socket there" in done.stdout, done.stdout
    else:
        assert "no socket there" in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]
    assert top_level(modules) & set(ENGINE_CLIENT) == set()


def test_no_model_field_defaults_through_a_factory_with_a_c_signature() -> None:
    """Pydantic reads each default factory's signature when a model class is made; a C type's (`list`'s) is text
    that inspect tokenizes and parses: 6 ms of every command over the models' list fields. empty_list is Python."""
    import importlib
    import pkgutil

    from pydantic import BaseModel

    import reconciler.api

    slow = set()
    for module in pkgutil.iter_modules(reconciler.api.__path__, "reconciler.api."):
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.name:
                slow |= {f"{value.__name__}.{name}" for name, field in value.model_fields.items()
                         if getattr(field.default_factory, "__text_signature__", None) is not None}
    assert slow == set()
