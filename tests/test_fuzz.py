"""Property-based fuzzing of the pure stages: load (bytes -> resources or LoadErrors), gate, rendering.

Deterministic (derandomize=True): CI sees the same examples every run. RECONCILER_FUZZ_EXAMPLES (default 400)
is the number of examples shared by the four loader properties (`test_loader_*`, a quarter each); every other
property runs as many as one loader property. Bugs found are pinned at the end as strict xfails.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import posixpath
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reconciler.api.container import CAPABILITIES
from reconciler.api.kinds import Policy, Workload, WorkloadSpec, spec_hash
from reconciler.api.launch import BindMount, render_launch
from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.control.workloads import WorkloadRenderer
from reconciler.diff.containers import render_container
from reconciler.diff.engines import Rendered, engine_command
from reconciler.diff.plan import Action, Verb
from reconciler.drive.container_config import create_args
from reconciler.drive.process import ProcessDriver
from reconciler.drive.protocol import StartFailed
from reconciler.gate.verdict import Facts, decide
from reconciler.load.desired import DesiredState, build_desired
from reconciler.load.yaml_source import MAX_FILE_BYTES
from reconciler.observe.docker_engine import ImageFacts
from reconciler.observe.host import EngineFacts

EXAMPLES = max(4, int(os.environ.get("RECONCILER_FUZZ_EXAMPLES", "400")) // 4)
FUZZ = settings(derandomize=True, deadline=None, max_examples=EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
ROOT, FILE, OTHER = "desired-state", "apps/fuzz.yaml", "other.yaml"
WEB = ResourceKey("Workload", "web")
PRESENT = ImageFacts(id="sha256:" + "b" * 64, user=None)
FACTS = EngineFacts(llama_server="/opt/llama-server", llama_cpp_python="/usr/bin/python3", vllm="/opt/vllm")


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def policy(**spec: Any) -> Policy:
    return Policy.model_validate(doc("Policy", "workstation", spec))


POLICY = doc("Policy", "workstation", {
    "native": {"trustedExecutables": [{"executable": "python3"}], "trustedEngines": ["llama.cpp"]},
    "containers": {"images": ["busybox:*"], "networks": ["bridge"], "volumeRoots": ["/srv"]},
    "network": {"exposed": [{"address": "::"}]}})
BASES = [POLICY, doc("Model", "tiny", {"source": "models/tiny.gguf", "sha256": "a" * 64, "size": "1Mi"}),
         doc("Workload", "web", {"command": ["python3", "-m", "http.server"], "args": ["8099"], "env": {"A": "1"},
                                 "workingDir": "./www", "port": 8099, "resources": {"memory": "2Gi", "cpus": 1.5},
                                 "health": {"http": {"path": "/"}}, "restart": {"backoff": {"initialSeconds": 1}}}),
         doc("Workload", "chat", {"engine": "llama.cpp", "model": "tiny", "port": 8080, "llamaCpp": {"threads": 4},
                                  "resources": {"gpus": {"count": 1}}}),
         doc("Workload", "box", {"runtime": "container", "image": "busybox:1.36", "command": ["httpd"], "args": ["-f"],
                                 "ports": [{"containerPort": 8080, "hostPort": 18080}], "network": "bridge",
                                 "volumes": [{"source": "./site", "target": "/srv"}], "health": {"tcp": {"port": 8080}},
                                 "security": {"capabilities": ["NET_BIND_SERVICE"], "user": "101:101"}})]
OTHER_FILE = yaml.safe_dump_all([doc("Workload", "other", {"command": ["sleep"], "port": 8080}), POLICY]).encode()
YAML_BREAKS = re.compile("\n")  # only \n ends a line, as editors count (see the last regression test)


def load(data: bytes) -> DesiredState:
    """The oracle of properties 1 and 2: loads FILE (beside a valid file it may clash with), checks every
    error names its file and a real position, and every resource re-validates from its dump."""
    contents = {FILE: data, OTHER: OTHER_FILE}
    state = build_desired(contents, display_root=ROOT)  # no exception may escape
    for file, errors in state.errors.items():
        lines = len(YAML_BREAKS.split(contents[file].decode("utf-8", "replace")))
        for error in errors:
            assert error.file == f"{ROOT}/{file}" and str(error).startswith(error.file), str(error)
            if error.position is not None:
                assert 1 <= error.position.line <= lines and error.position.column >= 1, str(error)
    for entry in state.resources.values():
        again = type(entry.resource).model_validate(entry.resource.model_dump(by_alias=True, mode="json"))
        assert again == entry.resource and spec_hash(again) == entry.spec_hash
    return state


TOKENS = ["apiVersion", "kind", "metadata", "spec", "name", "command", "ports", "user", API_VERSION, "Workload",
          "Policy", ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "? ", "&a ", "*a", "&b ", "*b", "<<: ", "!!binary ",
          "!!python/object:os.system ", "!!set ", "!!timestamp ", "!foo ", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n",
          "---", "...", "|", ">", "#", "'", '"', "\\", "\t", "\ufeff", "\x00", "\n", "\r", "\r\n", "\x85", "\u2028",
          "  ", "~", "yes", "0x1F", "1e9999", ".nan", "-.inf", "2001-01-01", "9" * 400, "é", "\u202e", "a" * 5000]


def deep(depth: int, kind: str) -> str:
    return {"flow": "[" * depth + "]" * depth, "map": "{a: " * depth + "}" * depth,
            "block": "".join(" " * i + "a:\n" for i in range(depth)), "alias": "a: &a [1]\n" + "".join(
                f"b{i}: &b{i} [{', '.join(['*' + ('a' if i == 0 else f'b{i - 1}')] * 9)}]\n" for i in range(depth % 12))}[kind]


yamlish = st.one_of(
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=60).map("".join),
    st.builds(deep, st.integers(1, 3000), st.sampled_from(["flow", "map", "block", "alias"])),
    st.sampled_from([64, 10**5, MAX_FILE_BYTES - 6, MAX_FILE_BYTES + 1]).map(lambda n: "k: " + "v" * n),
).map(str.encode)
odd = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
                st.lists(st.text(max_size=4), max_size=3), st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
                st.sampled_from(["0", "-1", "0:0", "1e400", "::", "0.0.0.0", "CAP_SYS_ADMIN", "/", "../..", "ALL",
                                 "a" * 300, "ß", "Always", "container", "host", "python3", "99999999999999999999Gi"]))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid documents, then deleted/replaced/retyped/added fields and duplicated or dropped lines."""
    docs = [copy.deepcopy(draw(st.sampled_from(BASES))) for _ in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(0, 4))):
        parent, key, node = None, None, draw(st.sampled_from(docs))
        while isinstance(node, (dict, list)) and node and (parent is None or draw(st.booleans())):
            parent, key = node, draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
            node = parent[key]
        operation = draw(st.sampled_from(["delete", "replace", "unknown", "wrap"]))
        if parent is not None and operation == "delete":
            del parent[key]
        elif parent is not None and operation in ("replace", "wrap"):
            parent[key] = draw(odd) if operation == "replace" else [node] if not isinstance(node, list) else {"x": node}
        elif isinstance(node, dict):
            node[draw(st.sampled_from(["extra", "comand", "imagePullPolicy", "port", "hostNetwork"]))] = draw(odd)
    text = yaml.safe_dump_all(docs, default_flow_style=draw(st.sampled_from([False, None, True])),
                              allow_unicode=draw(st.booleans()))
    lines = text.split("\n")
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(lines) - 1))
        lines[at:at + 1] = draw(st.sampled_from([[lines[at]] * 2, [], [lines[at], "---"]]))
    return "\n".join(lines).encode()


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(b"\xef\xbb\xbf".__add__)))
def test_loader_survives_arbitrary_bytes(data: bytes) -> None:
    """Property 1 on raw bytes (bad UTF-8, NULs, BOMs): resources or file:line:col LoadErrors, never a crash."""
    load(data)


@FUZZ
@given(yamlish)
def test_loader_survives_yamlish_text(data: bytes) -> None:
    """Property 1 on YAML token soup: foreign tags, anchors and alias bombs, deep nesting, huge scalars."""
    load(data)


@FUZZ
@given(mutated())
def test_loader_survives_mutated_specs(data: bytes) -> None:
    """Properties 1 and 2 on near-valid documents of every kind, where validation (not parsing) must answer."""
    load(data)


SECRET_LOOKING = st.one_of(st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=10, max_size=40)
                           .map("sk-".__add__), st.integers(10**9, 10**15))
FALLBACK = {"provider": "example", "baseUrl": "https://api.example.com/v1", "model": "big", "region": "eu",
            "context": ["prompts"], "apiKey": {"env": "EXAMPLE_API_KEY"}}
WITH_FALLBACK = doc("Workload", "hosted", {"engine": "llama.cpp", "model": "tiny", "port": 8081, "fallback": FALLBACK,
                                           "env": {"HF_HOME": "/srv/hf"}})


def value_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where a value of a document is: every leaf and container below the root, except metadata.name (a name)."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    found = [path] if path and path != ("metadata", "name") else []
    return found + [deeper for key, child in children for deeper in value_paths(child, (*path, key))]


@st.composite
def secret_placed(draw: st.DrawFn) -> tuple[bytes, str]:
    """A valid document with one value (not a name) replaced by a secret-looking string or number, bare or inside
    a list or a mapping (where another type was expected); it may also be where a type is wrong."""
    document = copy.deepcopy(draw(st.sampled_from([*BASES, WITH_FALLBACK])))
    path = draw(st.sampled_from(value_paths(document)))
    secret = draw(SECRET_LOOKING)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = draw(st.sampled_from([secret, [secret], {"x": secret}, {"HF_TOKEN": secret}]))
    return yaml.safe_dump(document).encode(), str(secret)


@FUZZ
@given(secret_placed())
def test_no_load_error_repeats_a_value_written_in_a_spec(placed: tuple[bytes, str]) -> None:
    """Issue 18.8: errors name the field and the type found, never the value (an env value, a fallback field or an
    argument may be a key, and errors reach a 0644 status file, `validate` output and the daemon log)."""
    data, secret = placed
    state = build_desired({FILE: data}, display_root=ROOT)
    shown = [str(error) for errors in state.errors.values() for error in errors]
    assert not [line for line in shown if secret in line]


# no lone surrogates: no UTF-8 file holds one (a "\ud800" escape is a clear load error: tested below)
HOSTILE = st.one_of(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12),
                    st.lists(st.sampled_from(
    [";", "|", "&&", "$(id)", "`id`", "${PATH}", ">", "<", "*", "?", "'", '"', "\\", "\n", " ", "~", "#", "!", "{a,b}",
     "%s", "--", "-c", "rm -rf /", "yes", "null", "1", "é", "\u202e"]), max_size=5).map("".join))
ENV_NAMES = st.one_of(st.sampled_from(["PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "IFS", "BASH_ENV"]),
                      st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)).filter(
    lambda name: not name.startswith("NVIDIA_") and name not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"))
HOST_IPS = st.one_of(st.sampled_from(["127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::", "0:0::0", "::ffff:127.0.0.1",
                                      "192.168.1.5", "fe80::1"]), st.ip_addresses().map(str))
USERS = st.one_of(st.sampled_from(["0", "00", "0:0", "1000:0", "0:1000", "000:1", "1000:1000", "65534:65534"]),
                  st.from_regex(r"[0-9]{1,6}(:[0-9]{1,6})?", fullmatch=True))


@st.composite
def container_specs(draw: st.DrawFn) -> dict[str, Any]:
    ports = draw(st.lists(st.fixed_dictionaries({"containerPort": st.integers(1, 65535)}, optional={
        "hostPort": st.integers(1, 65535), "hostIP": HOST_IPS, "protocol": st.sampled_from(["tcp", "udp"])}), max_size=3))
    network = draw(st.sampled_from([None, "bridge", "Bridge", "default", "my-net"] + ([] if ports else ["none", "host"])))
    return {"runtime": "container", "image": draw(st.sampled_from(["busybox:1.36", "ghcr.io/x/y", "a@sha256:" + "c" * 64])),
            "ports": ports, "security": draw(st.fixed_dictionaries({}, optional={
                "capabilities": st.lists(st.sampled_from(sorted(CAPABILITIES) + ["cap_sys_admin"]), max_size=3),
                "readOnlyRootFilesystem": st.booleans(), "user": USERS})),
            "volumes": draw(st.lists(st.fixed_dictionaries(
                {"source": st.sampled_from(["./site", "/", "/etc", "/var/run/docker.sock", "../..", "/srv/x"]),
                 "target": st.sampled_from(["/data", "/", "/etc"])}, optional={"readOnly": st.booleans()}), max_size=2)),
            } | ({"network": network} if network else {})


@st.composite
def native_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec = {"args": draw(st.lists(HOSTILE, max_size=4)), "env": draw(st.dictionaries(ENV_NAMES, HOSTILE, max_size=3))}
    engine = draw(st.sampled_from(["process", "llama.cpp", "vllm"]))
    if engine == "process":
        return spec | {"command": draw(st.lists(HOSTILE.filter(bool), min_size=1, max_size=3))}
    return spec | {"engine": engine, "model": "tiny", "port": 8081, "resources": {"gpus": {"count": 1}}}


def workload(spec: dict[str, Any]) -> Workload:
    try:
        return Workload.model_validate(doc("Workload", "web", spec))
    except ValidationError:
        reject()  # a generated spec the model refuses (e.g. a port published twice): not this property's business


def launch_of(spec: WorkloadSpec, image: ImageFacts = PRESENT) -> Any:
    """What the reconciler would run: volume sources resolved beside the spec, engines with every server present."""
    if spec.runtime.value == "container":
        return render_container(spec, image, tuple(BindMount(
            source=posixpath.normpath(posixpath.join("/srv/desired-state", volume.source)), target=volume.target,
            read_only=volume.read_only) for volume in spec.volumes), ())
    command = engine_command(spec, "/models/tiny.gguf", FACTS)
    return render_launch(spec, command.command, command.args, "/w", None, (), None, command.executable_from_spec)


@FUZZ
@given(st.one_of(container_specs(), native_specs()))
def test_loader_round_trips_generated_specs(spec: dict[str, Any]) -> None:
    """Property 2 on valid Workloads of every runtime and engine: they load, and dump -> validate keeps the hash."""
    workload(spec)
    state = load(yaml.safe_dump(doc("Workload", "web", spec)).encode())
    assert WEB in state.resources, [str(error) for errors in state.errors.values() for error in errors]


BOUNDED = policy(containers={"images": ["**"], "networks": ["bridge"]})


@FUZZ
@given(container_specs(), st.sampled_from([None, "", "root", "0", "0:0", "1000:0", "app", "1000:1000", "daemon:1"]),
       st.sampled_from([Verb.create, Verb.recreate]))
def test_gate_containers_least_privilege(spec: dict[str, Any], image_user: str | None, verb: Verb) -> None:
    """Property 3: no Policy approves no container; a policy allowing only images and bridge approves nothing with
    host/other networks, capabilities, a writable rootfs, root (uid or gid 0, or a name), volumes or exposed ports."""
    launch = launch_of(workload(spec).spec, ImageFacts(id=PRESENT.id, user=image_user))
    action = Action(WEB, verb, "not running", 1, launch)
    assert not decide(action, None).approved
    if decide(action, BOUNDED).approved:
        assert launch.network in ("none", "bridge") and launch.capabilities == () and launch.volumes == ()
        assert launch.read_only_root_filesystem
        assert all(part.isdigit() and int(part) > 0 for part in launch.effective_user.split(":")), launch.effective_user
        assert all(ipaddress.ip_address(port.host_ip).is_loopback and port.host_port >= 1024 for port in launch.ports)


def test_gate_bounded_policy_is_not_vacuous() -> None:
    """Property 3 would hold trivially if BOUNDED approved nothing."""
    spec = workload({"runtime": "container", "image": "busybox", "ports": [{"containerPort": 8080}]}).spec
    assert decide(Action(WEB, Verb.create, "", 1, launch_of(spec)), BOUNDED).approved


@FUZZ
@given(native_specs(), st.sampled_from([(), ("/usr/bin/python3", "/usr/bin/python3.11"), ("/opt/llama-server",)]))
def test_gate_default_policy_never_starts_native(spec: dict[str, Any], executables: tuple[str, ...]) -> None:
    """Property 3, native: without a Policy no process (any command, env, args or engine) is started."""
    assert not decide(Action(WEB, Verb.create, "", 1, launch_of(workload(spec).spec)), None, Facts(executables)).approved


@FUZZ
@given(st.lists(HOSTILE.filter(bool), min_size=1, max_size=3), st.lists(HOSTILE, max_size=4),
       st.dictionaries(ENV_NAMES, HOSTILE, max_size=4), st.booleans())
def test_hostile_strings_reach_argv_verbatim(command: list[str], args: list[str], env: dict[str, str], boxed: bool) -> None:
    """Property 4: shell metacharacters in command/args/env survive YAML, load and rendering (native argv, the
    engine's Entrypoint/Cmd/Env) byte for byte: nothing is split, expanded or run through a shell."""
    spec = {"command": command, "args": args, "env": env} | ({"runtime": "container", "image": "busybox"} if boxed else {})
    launch = launch_of(load(yaml.safe_dump(doc("Workload", "web", spec)).encode()).resources[WEB].resource.spec)
    assert launch.argv == (*command, *args) and launch.env == env
    if boxed:
        created = create_args("web", "web-1", "owner", launch, 1)
        assert created["entrypoint"] == command and created["command"] == (args or None)
        assert {name: created["environment"][name] for name in env} == env


@FUZZ
@given(HOSTILE.map(lambda text: "/" + text), st.dictionaries(ENV_NAMES, HOSTILE, max_size=3))
def test_gate_bare_name_trust_is_void_when_the_spec_sets_path(path: str, env: dict[str, str]) -> None:
    """Property 4, README: command[0] as written is trusted only when the spec does not set PATH; with env.PATH
    (whatever else env holds, LD_PRELOAD included) the file found on that PATH must itself be trusted."""
    trusts_python3 = policy(native={"trustedExecutables": [{"executable": "python3"}]})
    spec = workload({"command": ["python3", "-c", "pass"], "env": env | {"PATH": path}}).spec
    found = posixpath.join(path.split(":")[0], "python3")
    verdict = decide(Action(WEB, Verb.create, "", 1, launch_of(spec)), trusts_python3, Facts((found, found)))
    assert not verdict.approved and found in verdict.reasons[0].message
    plain = launch_of(workload({"command": ["python3", "-c", "pass"]}).spec)
    assert decide(Action(WEB, Verb.create, "", 1, plain), trusts_python3, Facts(("/usr/bin/python3",))).approved


# -- what the fuzzing found (each was a bug; now a regression test) ------------------------------------------

def test_exec_check_is_not_trusted_by_bare_name_when_the_spec_sets_path(tmp_path: Any) -> None:
    (tmp_path / "python3").touch(mode=0o755)
    rules = policy(native={"trustedExecutables": [{"executable": "python3"}, {"executable": "/usr/bin/python3"}]})
    web = workload({"command": ["/usr/bin/python3"], "env": {"PATH": str(tmp_path)}, "health": {"exec": {"command": ["python3"]}}})
    launch = launch_of(web.spec)
    checks = WorkloadRenderer.check_executables(None, Rendered(launch, None, web.spec.health), web)  # type: ignore[arg-type]
    assert checks[1] == str(tmp_path / "python3")  # what observe/probes.py runs, with the spec's env
    assert not decide(Action(WEB, Verb.create, "", 1, launch), rules, Facts(("/usr/bin/python3",), checks)).approved


def test_a_uid_without_a_gid_counts_as_root_group() -> None:
    """runc runs `--user 1000` with group 0 (docker run --user 1000 busybox id: gid=0(root))."""
    launch = launch_of(workload({"runtime": "container", "image": "busybox", "security": {"user": "1000"}}).spec)
    assert not decide(Action(WEB, Verb.create, "", 1, launch), BOUNDED).approved


def test_a_nul_in_an_argument_is_a_load_error_and_never_crashes_the_driver(tmp_path: Any) -> None:
    loaded = load(b'apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: web}\n'
                  b'spec: {command: [/bin/true], args: ["a\\0b"]}\n')
    assert WEB not in loaded.resources and "NUL character" in str(loaded.errors[FILE][0])
    spec = workload({"command": ["/bin/true"]}).spec
    with pytest.raises(StartFailed):  # a second line of defence: the driver turns Popen's ValueError into a failure
        ProcessDriver(tmp_path).start("web", render_launch(spec, ("/bin/true",), ("a\0b",), "/", "/bin/true"), 1)


def test_a_lone_surrogate_escape_is_a_clear_load_error() -> None:
    """Found by the 10,000-example run: YAML's "\\ud800" escape makes a string no file can hold."""
    desired = load(b'apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: web}\n'
                   b'spec:\n  command: ["\\ud800"]\n')
    assert WEB not in desired.resources
    (error,) = [error for errors in desired.errors.values() for error in errors]
    assert error.field == "spec.command[0]" and error.position.line == 5 and "unicode" in error.message


def test_infinite_seconds_are_refused_at_load() -> None:
    """A stored record writes inf as null and could never be read back: the workload could be neither changed nor removed."""
    loaded = load(b'apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: web}\n'
                  b'spec: {command: [sleep], restart: {backoff: {resetAfterSeconds: .inf}}}\n')
    assert WEB not in loaded.resources and "resetAfterSeconds" in str(loaded.errors[FILE][0])
    with pytest.raises(ValidationError):
        Workload.model_validate(doc("Workload", "web", {"command": ["sleep"], "port": 80,
                                                        "health": {"tcp": {}, "startupSeconds": float("nan")}}))


def test_error_lines_count_newlines_only_as_editors_do() -> None:
    text = "# note\u2028\napiVersion: localaistack.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {source: x, formt: gguf}\n"
    (error,) = load(text.encode()).errors[FILE]
    assert (error.field, error.position.line) == ("spec.formt", 5)  # PyYAML's own marks say 6
