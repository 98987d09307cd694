"""What a llama.cpp build can do (offload to a GPU, through which backend), asked of the build itself.

A build is asked once per digest (of the executable and the ggml/llama libraries it loads) and per GPU set of
the host, in a subprocess with a bounded wait; the answer is kept in the state directory, written atomically.
Only the host's own servers are asked (llama-server on the reconciler's PATH, llama-cpp-python in its Python):
a server a spec names is not run before the gate has judged it, so its build is confirmed after its start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from reconciler.base.atomic import write_atomic
from reconciler.observe.gpus import GpuInventory
from reconciler.observe.host import file_sha256

LLAMA_CPP_PYTHON, LLAMA_SERVER = "llama-cpp-python", "llama-server"
PROBE_SECONDS = 60.0  # a CUDA build initialises every GPU it sees: seconds, more on a cold driver
CACHE_FILE = "engine-builds.json"
RETRY_SECONDS = 300.0  # a build that could not be asked is asked again after this
CACHE_ENTRIES = 32  # builds come and go with upgrades: the oldest answers are dropped beyond this

# Run with -P -s from /: nothing in a working directory or a user site-packages is imported. ggml's device
# listing is read through ctypes: llama-cpp-python binds llama.h, not ggml-backend.h.
_PYTHON_PROBE = r"""
import ctypes, json, pathlib, llama_cpp
folder = pathlib.Path(llama_cpp.__file__).parent / "lib"
try:
    ggml = ctypes.CDLL(str(folder / "libggml.so"))
except OSError:
    ggml = llama_cpp.llama_cpp._lib
P, S = ctypes.c_void_p, ctypes.c_size_t
for name, result, arguments in (("ggml_backend_reg_count", S, []), ("ggml_backend_reg_get", P, [S]),
        ("ggml_backend_reg_name", ctypes.c_char_p, [P]), ("ggml_backend_dev_count", S, []),
        ("ggml_backend_dev_get", P, [S]), ("ggml_backend_dev_name", ctypes.c_char_p, [P]),
        ("ggml_backend_dev_description", ctypes.c_char_p, [P]),
        ("ggml_backend_dev_memory", None, [P, ctypes.POINTER(S), ctypes.POINTER(S)])):
    function = getattr(ggml, name)
    function.restype, function.argtypes = result, arguments
def device(index):
    handle, free, total = ggml.ggml_backend_dev_get(index), S(), S()
    ggml.ggml_backend_dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
    name, about = ggml.ggml_backend_dev_name(handle).decode(), ggml.ggml_backend_dev_description(handle).decode()
    return f"{name}: {about} ({total.value // 2**20} MiB)"
print(json.dumps({
    "offload": bool(llama_cpp.llama_supports_gpu_offload()),
    "backends": [ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode() for i in range(ggml.ggml_backend_reg_count())],
    "devices": [device(i) for i in range(ggml.ggml_backend_dev_count())],
}))
"""
# llama-server --list-devices: "Available devices:" then one "  CUDA0: NVIDIA ... (24080 MiB, 23664 MiB free)" per
# device; the CPU is never listed, and an RPC server is another host's device, not this one's.
_LISTED_DEVICE = re.compile(r"^\s+(?P<name>\S+?): (?P<about>.+)$")
_BACKEND = re.compile(r"^(?P<backend>[A-Za-z_]+?)\d*$")


@dataclass(frozen=True)
class EngineBuild:
    kind: str  # llama-cpp-python or llama-server
    executable: str
    digest: str  # sha256 over the executable and the ggml/llama libraries beside it
    gpu_offload: bool | None  # None: the build could not be asked (problem says why)
    backends: tuple[str, ...] = ()  # compiled in (llama-cpp-python), or of the devices listed (llama-server)
    devices: tuple[str, ...] = ()
    problem: str | None = None

    def describe(self) -> str:
        return f"{self.kind} at {self.executable} (build sha256:{self.digest[:12]})"

    def lacks(self) -> str:
        """What keeps it off the GPU, in a clause."""
        if self.gpu_offload is None:
            return f"it could not be asked whether it can offload ({self.problem})"
        backends = ", ".join(self.backends) or "none"
        if self.kind == LLAMA_SERVER:
            return "it lists no GPU device (`llama-server --list-devices`): a CPU-only build, or no driver for its backend"
        if any(backend != "CPU" for backend in self.backends):
            return f"its backends ({backends}) see no GPU device on this host"
        return f"it has no GPU backend compiled in (backends: {backends})"


class EngineBuilds:
    """The builds asked so far, in memory and in the state directory's cache file."""

    def __init__(self, state_dir: Path, record: bool = True) -> None:
        """`record` False: answers are read from the cache file but new ones kept in memory (a read-only command)."""
        self._file = state_dir / CACHE_FILE
        self._record = record
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[EngineBuild, float]] = {}  # key -> (the failed answer, when)
        self._known: dict[str, dict[str, object]] = self._read()

    def of(self, kind: str, executable: str, inventory: GpuInventory) -> EngineBuild:
        with self._lock:  # passes run in several workers: one build is asked once
            return self._of(kind, executable, inventory)

    def _of(self, kind: str, executable: str, inventory: GpuInventory) -> EngineBuild:
        digest = build_digest(kind, executable)
        if digest is None:
            return EngineBuild(kind, executable, "unreadable", None, problem=f"{executable} cannot be read")
        key = f"{kind}|{executable}|{digest}|{_gpu_key(inventory)}"
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[1] < RETRY_SECONDS:
            return failed[0]
        known = self._known.get(key)
        if known is not None:
            try:
                return EngineBuild(**{**known, "backends": tuple(known["backends"]), "devices": tuple(known["devices"])})
            except (TypeError, KeyError):
                pass  # a cache entry from another version of this code: asked again
        build = probe(kind, executable, digest)
        if build.gpu_offload is None:  # a timeout on a busy host may pass: asked again later, never on every pass
            self._failed[key] = (build, time.monotonic())
        else:
            self._known = dict(list({**self._known, key: asdict(build)}.items())[-CACHE_ENTRIES:])
            if self._record:
                write_atomic(self._file, json.dumps(self._known, indent=1), 0o600)
        return build

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            found = json.loads(self._file.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}


def probe(kind: str, executable: str, digest: str) -> EngineBuild:
    """Ask the build itself, with every GPU of the host visible to it in NVML's order."""
    env = {name: value for name, value in os.environ.items() if name != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    argv = [executable, "-P", "-s", "-c", _PYTHON_PROBE] if kind == LLAMA_CPP_PYTHON else [executable, "--list-devices"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=PROBE_SECONDS, env=env,
                              cwd="/", stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return EngineBuild(kind, executable, digest, None, problem=f"`{argv[0]} {argv[1]}` gave no answer in {PROBE_SECONDS:.0f} s")
    except OSError as error:
        return EngineBuild(kind, executable, digest, None, problem=f"{executable} could not be run: {error.strerror or error}")
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["nothing"])[-1][:300]
        return EngineBuild(kind, executable, digest, None, problem=f"the probe exited with code {done.returncode}: {said}")
    if kind == LLAMA_CPP_PYTHON:
        return _python_answer(executable, digest, done.stdout)
    offload, backends, devices = parse_device_list(done.stdout + done.stderr)
    return EngineBuild(kind, executable, digest, offload, backends, devices)


def parse_device_list(output: str) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """llama-server --list-devices: whether it lists a local device, the backends listed, the devices."""
    lines = output.splitlines()
    start = next((n + 1 for n, line in enumerate(lines) if line.strip() == "Available devices:"), len(lines))
    devices = []
    for line in lines[start:]:
        found = _LISTED_DEVICE.match(line)
        if found is None:
            break
        if not found["name"].startswith("RPC"):
            devices.append(f"{found['name']}: {found['about']}")
    backends = sorted({match["backend"] for device in devices if (match := _BACKEND.match(device.split(":")[0]))})
    return bool(devices), tuple(backends), tuple(devices)


def _python_answer(executable: str, digest: str, stdout: str) -> EngineBuild:
    try:
        said = json.loads(stdout.strip().splitlines()[-1])
        return EngineBuild(LLAMA_CPP_PYTHON, executable, digest, bool(said["offload"]),
                           tuple(map(str, said["backends"])), tuple(map(str, said["devices"])))
    except (ValueError, KeyError, TypeError, IndexError):
        return EngineBuild(LLAMA_CPP_PYTHON, executable, digest, None, problem=f"the probe's answer is unreadable: {stdout[-200:]!r}")


def build_digest(kind: str, executable: str) -> str | None:
    """The executable's bytes and those of the engine libraries it loads: a rebuild with CUDA changes them."""
    libraries = _llama_cpp_python_libraries() if kind == LLAMA_CPP_PYTHON else _libraries_beside(Path(executable))
    digests = [(executable, file_sha256(executable))] + [(path.name, file_sha256(str(path))) for path in libraries]
    if digests[0][1] is None:
        return None
    return hashlib.sha256(json.dumps(digests).encode()).hexdigest()


def _llama_cpp_python_libraries() -> list[Path]:
    found = importlib.util.find_spec("llama_cpp")
    folders = [Path(location) / "lib" for location in (found.submodule_search_locations or ())] if found else []
    return _engine_libraries(folders)


def _libraries_beside(executable: Path) -> list[Path]:
    """A release archive puts its libraries beside llama-server; `cmake --install` in ../lib."""
    return _engine_libraries([executable.resolve().parent, executable.resolve().parent.parent / "lib"])


def _engine_libraries(folders: list[Path]) -> list[Path]:
    found = []
    for folder in folders:
        try:
            found += [path for path in folder.iterdir() if path.name.startswith(("libggml", "libllama")) and path.is_file()
                      and not path.is_symlink()]
        except OSError:
            continue
    return sorted(found)


def _gpu_key(inventory: GpuInventory) -> str:
    """A build's answer holds for the GPUs and driver it was asked with."""
    return ",".join(gpu.uuid for gpu in inventory.gpus) + f"@{inventory.driver}"
