"""Container runtime rules, all pure: the spec's validation, the rendered launch, the gate, shared ports."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.api.container import (
    NOBODY, ContainerSecurity, PortMapping, known_capabilities, runs_as_root, valid_image_reference,
)
from reconciler.api.kinds import ContainerPolicy, Policy
from reconciler.api.launch import BindMount, ContainerLaunch, PublishedPort, render_launch
from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.api.checks import HealthCheck
from reconciler.api.workload import WorkloadSpec
from reconciler.diff.containers import check_address, container_endpoint, render_container
from reconciler.diff.engines import Blocked
from reconciler.diff.plan import Action, Verb
from reconciler.gate.verdict import Decision, decide
from reconciler.load.desired import build_desired
from reconciler.observe.docker_engine import ImageFacts

WEB = ResourceKey("Workload", "web")
IMAGE = "busybox:1.36"
DIGEST = "sha256:" + "a" * 64
PRESENT = ImageFacts(id="sha256:" + "b" * 64, user=None)


def container(**spec: Any) -> WorkloadSpec:
    return WorkloadSpec.model_validate({"runtime": "container", "image": IMAGE, "command": ["httpd"], **spec})


def spec_error(**spec: Any) -> str:
    """The one error message validating `spec` gives."""
    with pytest.raises(ValidationError) as raised:
        WorkloadSpec.model_validate(spec)
    (error,) = raised.value.errors()
    return error["msg"].removeprefix("Value error, ")


def container_error(**spec: Any) -> str:
    return spec_error(**{"runtime": "container", "image": IMAGE, "command": ["httpd"], **spec})


def launch(**fields: Any) -> ContainerLaunch:
    return ContainerLaunch(**{"image": IMAGE, "image_id": PRESENT.id, **fields})


def policy(exposed: tuple[str, ...] = (), privileged_ports: tuple[int, ...] = (), **containers: Any) -> Policy:
    return Policy.model_validate({"apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": "workstation"},
                                  "spec": {"containers": {"images": [IMAGE], **containers},
                                           "network": {"exposed": [{"address": address} for address in exposed],
                                                       "privilegedPorts": list(privileged_ports)}}})


def verdict_for(container_launch: ContainerLaunch, rules: Policy | None, verb: Verb = Verb.create):
    return decide(Action(WEB, verb, "not running", 1, container_launch), rules)


# -- image references, capabilities, users

@pytest.mark.parametrize("reference", [
    "busybox", "busybox:1.36", "ghcr.io/org/img:tag", f"localhost:5000/a/b@{DIGEST}", f"busybox@{DIGEST}",
    "library/my_app__x:v1.2-rc", "[::1]:5000/a",
    "UPPER/case",  # Docker reads an upper-case first element as a registry host (distribution/reference)
])
def test_valid_image_references(reference: str) -> None:
    assert valid_image_reference(reference) == reference


@pytest.mark.parametrize("reference", [
    "Upper", "org/Upper", "a::b", "name@sha256:short", f"name@sha256:{'A' * 64}", " spaced", "-lead", "a/", "",
    "busybox:-tag", "a" * 256,
])
def test_invalid_image_references_name_the_expected_form(reference: str) -> None:
    with pytest.raises(ValueError, match=r"expected an image reference: \[registry/\]name\[:tag\]"):
        valid_image_reference(reference)


def test_spec_image_is_checked_as_a_reference() -> None:
    message = container_error(image="org/Upper")
    assert "expected an image reference" in message and "org/Upper" not in message


def test_capabilities_are_normalised_sorted_and_deduplicated() -> None:
    assert known_capabilities(["cap_net_raw", "NET_BIND_SERVICE", "CAP_NET_RAW", "chown"]) == [
        "CHOWN", "NET_BIND_SERVICE", "NET_RAW"]
    assert ContainerSecurity(capabilities=["Cap_Sys_Nice"]).capabilities == ["SYS_NICE"]


def test_unknown_capability_is_an_error_naming_its_items() -> None:
    with pytest.raises(ValidationError, match=r"item 0, 2: expected a capability name of capabilities\(7\)"):
        ContainerSecurity(capabilities=["cap_flying", "NET_RAW", "ALL"])


@pytest.mark.parametrize(("user", "valid"), [("1000", True), ("1000:1000", True), ("0", True), ("app", False),
                                             ("www-data:www-data", False), ("", False), (":1000", False),
                                             ("1:2:3", False), ("-1", False), ("a b", False)])
def test_user_pattern(user: str, valid: bool) -> None:
    if valid:
        assert ContainerSecurity(user=user).user == user
    else:
        with pytest.raises(ValidationError, match="String should match pattern"):
            ContainerSecurity(user=user)


@pytest.mark.parametrize(("user", "root"), [("root", True), ("0", True), ("root:app", True), ("0:0", True),
                                            ("1000:0", True), ("rootless", True), ("10", True), ("10:10", False)])
def test_runs_as_root_counts_gid_0_any_name_and_a_uid_without_gid(user: str, root: bool) -> None:
    assert runs_as_root(user) is root


def test_a_zero_padded_uid_is_root() -> None:
    assert runs_as_root("00")


# -- ports

def test_port_mapping_defaults_to_loopback_tcp_on_the_container_port() -> None:
    port = PortMapping.model_validate({"containerPort": 8080})
    assert (port.host_ip, port.published_port, port.protocol) == ("127.0.0.1", 8080, "tcp")
    assert PortMapping.model_validate({"containerPort": 8080, "hostPort": 9000}).published_port == 9000


def test_host_ip_is_normalised_and_must_be_an_address() -> None:
    assert PortMapping.model_validate({"containerPort": 1, "hostIP": "::0001"}).host_ip == "::1"
    assert PortMapping.model_validate({"containerPort": 1, "hostIP": "0:0::0"}).host_ip == "::"
    with pytest.raises(ValidationError, match=r"expected an IP address \(e.g. 127.0.0.1\)"):
        PortMapping.model_validate({"containerPort": 1, "hostIP": "localhost"})


# -- the spec's rules for runtime container

@pytest.mark.parametrize(("spec", "message"), [
    ({"image": None}, "runtime 'container' needs spec.image"),
    ({"engine": "vllm", "command": None, "model": "m", "port": 8000, "resources": {"gpus": {"count": 1}}},
     "engine 'vllm' runs natively: use runtime 'native' (or engine 'process' with the engine's image)"),
    ({"port": 8080}, "spec.port is for runtime 'native', not 'container' (publish container ports with spec.ports)"),
    ({"host": "0.0.0.0"}, "spec.host is for runtime 'native', not 'container' (publish container ports with spec.ports)"),
    ({"model": "m"}, "spec.model is for runtime 'native', not 'container'"),
    ({"workingDir": "www"}, "spec.workingDir of a container is a path inside it: it must be absolute"),
    ({"ports": [{"containerPort": 80}], "network": "none"}, "spec.ports cannot be published on network 'none'"),
    ({"ports": [{"containerPort": 80}], "network": "host"}, "spec.ports cannot be published on network 'host'"),
    ({"ports": [{"containerPort": 8080}, {"containerPort": 9090, "hostPort": 8080}]},
     "spec.ports publishes tcp port 8080 twice (127.0.0.1:8080 and 127.0.0.1:8080)"),
])
def test_container_spec_rules(spec: dict, message: str) -> None:
    assert container_error(**spec) == message


def test_same_port_on_other_address_or_protocol_is_not_twice() -> None:
    spec = container(ports=[{"containerPort": 53}, {"containerPort": 53, "protocol": "udp"},
                            {"containerPort": 53, "hostIP": "::1"}])
    assert spec.listens == [("127.0.0.1", 53, "tcp"), ("127.0.0.1", 53, "udp"), ("::1", 53, "tcp")]


def test_absolute_working_dir_and_spelled_out_native_defaults_are_accepted() -> None:
    spec = container(workingDir="/srv", host="127.0.0.1", network="bridge", ports=[{"containerPort": 80}])
    assert spec.working_dir == "/srv" and spec.listens == [("127.0.0.1", 80, "tcp")]


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("image", IMAGE, "image"), ("imagePullPolicy", "Never", "imagePullPolicy"),
    ("ports", [{"containerPort": 80}], "ports"), ("volumes", [{"source": "/data", "target": "/data"}], "volumes"),
    ("network", "bridge", "network"), ("security", {"user": "1000"}, "security"),
])
def test_native_rejects_container_fields(field: str, value: Any, shown: str) -> None:
    assert spec_error(command=["srv"], **{field: value}) == f"spec.{shown} is for runtime 'container', not 'native'"


def test_native_accepts_container_fields_spelled_at_their_defaults() -> None:
    spec = WorkloadSpec.model_validate({"command": ["srv"], "imagePullPolicy": "IfNotPresent", "ports": [],
                                        "volumes": [], "network": None, "security": {"readOnlyRootFilesystem": True}})
    assert spec.listens == []


def test_full_dump_of_a_native_spec_validates_back() -> None:
    spec = WorkloadSpec.model_validate({"command": ["python3", "-m", "http.server"], "port": 8099,
                                        "health": {"tcp": {}}, "env": {"A": "1"}})
    dumped = spec.model_dump(mode="json", by_alias=True)
    assert dumped["security"] == {"capabilities": [], "readOnlyRootFilesystem": True, "user": None, "pidsLimit": 512}
    assert WorkloadSpec.model_validate(dumped) == spec


def test_full_dump_of_a_container_spec_validates_back() -> None:
    spec = container(ports=[{"containerPort": 8080, "hostPort": 18080}], health={"http": {"path": "/ok"}},
                     volumes=[{"source": "data", "target": "/data"}], security={"capabilities": ["cap_chown"]})
    dumped = spec.model_dump(mode="json", by_alias=True)
    assert dumped["host"] == "127.0.0.1" and dumped["port"] is None
    assert WorkloadSpec.model_validate(dumped) == spec


def test_container_http_check_must_probe_a_published_tcp_port() -> None:
    assert container(ports=[{"containerPort": 8080, "hostPort": 1}], health={"http": {}}).default_port == 8080
    assert container(ports=[{"containerPort": 80}, {"containerPort": 81}], health={"tcp": {"port": 81}})
    missing = container_error(ports=[{"containerPort": 80}], health={"tcp": {"port": 81}})
    assert missing == ("an http or tcp health check of a container probes a published tcp port; "
                       "81 is not in spec.ports (or use an exec check)")
    assert "no port is not in spec.ports" in container_error(health={"http": {}})
    assert "80 is not in spec.ports" in container_error(ports=[{"containerPort": 80, "protocol": "udp"}],
                                                        health={"http": {"port": 80}})
    assert container(health={"exec": {"command": ["true"]}}).default_port is None  # an exec check needs no port


def test_native_listens_and_default_port() -> None:
    spec = WorkloadSpec.model_validate({"command": ["srv"], "host": "0.0.0.0", "port": 8080})
    assert spec.listens == [("0.0.0.0", 8080, "tcp")] and spec.default_port == 8080
    assert WorkloadSpec.model_validate({"command": ["srv"]}).listens == []


# -- policy

def test_container_policy_checks_volume_roots_and_capabilities() -> None:
    assert ContainerPolicy(capabilities=["cap_net_raw", "NET_RAW"]).capabilities == ["NET_RAW"]
    with pytest.raises(ValidationError, match="volume roots must be absolute paths: item 1 is not"):
        ContainerPolicy(volume_roots=["/srv", "data"])
    with pytest.raises(ValidationError, match="item 0: expected a capability name"):
        ContainerPolicy(capabilities=["EVERYTHING"])


# -- the launch

@pytest.mark.parametrize(("spec_user", "image_user", "effective"), [
    ("1000", "root", "1000"), ("0", None, "0"), (None, "1000:1000", "1000:1000"), (None, "web", NOBODY),
    (None, "root", NOBODY), (None, "0:0", NOBODY), (None, "", NOBODY), (None, None, NOBODY),
])
def test_effective_user(spec_user: str | None, image_user: str | None, effective: str) -> None:
    assert launch(user=spec_user, image_user=image_user).effective_user == effective


def test_an_image_user_of_padded_zero_falls_back_to_nobody() -> None:
    assert launch(image_user="00").effective_user == NOBODY


def test_digest_and_changed_fields_speak_the_users_vocabulary() -> None:
    base = launch()
    assert base.digest == launch().digest and len(base.digest) == 64
    changed = launch(image_id="sha256:" + "c" * 64, user="app", capabilities=("CHOWN",), network="bridge")
    assert changed.digest != base.digest
    assert changed.changed_fields(base) == ["the image (its ID)", "spec.security.user", "spec.network",
                                            "spec.security.capabilities"]
    assert base.pull is False and launch(image_id=None).pull is True


def test_switching_runtime_is_one_change_both_ways() -> None:
    native_spec = WorkloadSpec.model_validate({"command": ["srv"]})
    native = render_launch(native_spec, ("srv",), (), "/srv", "/usr/bin/srv")
    assert launch().changed_fields(native) == ["spec.runtime"]
    assert native.changed_fields(launch()) == ["spec.runtime"]


def test_render_container_follows_the_spec() -> None:
    spec = container(args=["-v"], env={"A": "1"}, workingDir="/w", resources={"memory": "64Mi", "cpus": 0.5},
                     ports=[{"containerPort": 8080, "hostPort": 9000}],
                     security={"user": "1000", "capabilities": ["net_bind_service"], "readOnlyRootFilesystem": False,
                               "pidsLimit": 64})
    mounts = (BindMount(source="/data/x", target="/x"),)
    rendered = render_container(spec, ImageFacts(id="sha256:1", user="web"), mounts, (0,))
    assert isinstance(rendered, ContainerLaunch)
    assert (rendered.image_id, rendered.image_user, rendered.user) == ("sha256:1", "web", "1000")
    assert rendered.command == ("httpd",) and rendered.args == ("-v",) and rendered.working_dir == "/w"
    assert rendered.ports == (PublishedPort(host_ip="127.0.0.1", host_port=9000, container_port=8080),)
    assert rendered.network == "bridge" and rendered.volumes == mounts and rendered.gpus == (0,)
    assert rendered.capabilities == ("NET_BIND_SERVICE",) and not rendered.read_only_root_filesystem
    assert (rendered.pids_limit, rendered.memory_limit, rendered.cpus) == (64, 64 * 1024**2, 0.5)


def test_render_container_defaults_network_none_and_pulls_a_missing_image() -> None:
    rendered = render_container(container(), None, (), ())
    assert isinstance(rendered, ContainerLaunch)
    assert rendered.network == "none" and rendered.pull and rendered.args is None
    assert render_container(container(network="mynet"), PRESENT, (), ()).network == "mynet"


def test_missing_image_with_pull_policy_never_is_blocked() -> None:
    blocked = render_container(container(imagePullPolicy="Never"), None, (), ())
    assert isinstance(blocked, Blocked) and blocked.reason == "ImageNotPresent"
    assert blocked.message.startswith(f"image {IMAGE} is not on this host and imagePullPolicy is Never")
    assert isinstance(render_container(container(imagePullPolicy="Never"), PRESENT, (), ()), ContainerLaunch)


@pytest.mark.parametrize(("host_ip", "address", "endpoint"), [
    ("127.0.0.1", ("127.0.0.1", 9000), "http://127.0.0.1:9000"), ("0.0.0.0", ("127.0.0.1", 9000), "http://127.0.0.1:9000"),
    ("::", ("::1", 9000), "http://[::1]:9000"), ("192.168.1.5", ("192.168.1.5", 9000), "http://192.168.1.5:9000"),
])
def test_checks_reach_the_published_side(host_ip: str, address: tuple, endpoint: str) -> None:
    spec = container(ports=[{"containerPort": 8080, "hostPort": 9000, "hostIP": host_ip}], health={"http": {}})
    assert spec.health is not None
    assert check_address(spec.health, spec) == address
    assert container_endpoint(spec) == endpoint


def test_check_address_skips_udp_and_exec_and_endpoint_needs_tcp() -> None:
    spec = container(ports=[{"containerPort": 53, "protocol": "udp"}, {"containerPort": 53, "hostPort": 5353}])
    assert check_address(HealthCheck.model_validate({"tcp": {"port": 53}}), spec) == ("127.0.0.1", 5353)
    assert check_address(HealthCheck.model_validate({"exec": {"command": ["true"]}}), spec) is None
    assert container_endpoint(container(ports=[{"containerPort": 53, "protocol": "udp"}])) is None


# -- the gate

def test_default_policy_allows_no_image() -> None:
    verdict = verdict_for(launch(), None)
    assert verdict.decision is Decision.deny
    assert [(reason.rule, reason.message) for reason in verdict.reasons] == [(
        "containers.images", f"image {IMAGE} is not allowed by default policy: "
                             "add it (or a pattern such as 'name:*') to spec.containers.images")]


@pytest.mark.parametrize("verb", [Verb.create, Verb.recreate])
def test_an_allowed_image_at_least_privilege_is_approved(verb: Verb) -> None:
    verdict = verdict_for(launch(), policy(images=["busybox:*"]), verb)
    assert verdict.approved
    assert [str(reason) for reason in verdict.reasons] == [
        f"containers.images: image {IMAGE} is allowed by Policy/workstation"]


def test_removing_a_container_needs_no_rule() -> None:
    verdict = verdict_for(launch(image="evil:latest"), None, Verb.delete)
    assert verdict.approved and verdict.reasons[0].rule == "no-side-effects"


@pytest.mark.parametrize(("relaxed", "rule", "fragment"), [
    ({"image_id": None}, "containers.pull", f"image {IMAGE} is not on this host and Policy/workstation does not allow pulls"),
    ({"network": "mynet"}, "containers.networks", "network mynet gives the container outbound access"),
    ({"network": "bridge", "ports": (PublishedPort(host_ip="127.0.0.1", host_port=8080, container_port=80),)},
     "containers.networks", "network bridge (publishing ports needs it) gives the container outbound access"),
    ({"capabilities": ("NET_RAW", "CHOWN")}, "containers.capabilities",
     "capabilities CHOWN, NET_RAW are not allowed by Policy/workstation"),
    ({"read_only_root_filesystem": False}, "containers.writableRootFilesystem",
     "a writable root filesystem is not allowed by Policy/workstation"),
    ({"user": "0:0"}, "containers.root", "running as 0:0 (root: uid or gid 0"),
    ({"volumes": (BindMount(source="/etc", target="/x"),)}, "containers.volumeRoots",
     "volume source /etc lies outside the folders Policy/workstation allows (spec.containers.volumeRoots: none)"),
    ({"network": "host"}, "containers.hostNetwork", "network host shares every host port and interface"),
])
def test_each_relaxation_needs_its_own_rule(relaxed: dict, rule: str, fragment: str) -> None:
    verdict = verdict_for(launch(**relaxed), policy())
    assert verdict.decision is Decision.deny
    ((got_rule, message),) = [(reason.rule, reason.message) for reason in verdict.reasons]
    assert got_rule == rule and fragment in message


def test_relaxations_are_approved_when_the_policy_allows_each() -> None:
    relaxed = launch(image_id=None, network="bridge", capabilities=("NET_RAW",), read_only_root_filesystem=False,
                     user="root", volumes=(BindMount(source="/data/models/a", target="/m"),),
                     ports=(PublishedPort(host_ip="0.0.0.0", host_port=80, container_port=80),))
    everything = policy(pull=True, networks=["bridge"], capabilities=["cap_net_raw"], writableRootFilesystem=True,
                        root=True, volumeRoots=["/data/models"], exposed=("0.0.0.0",), privileged_ports=(80,))
    assert verdict_for(relaxed, everything).approved
    denied = verdict_for(relaxed, policy())
    assert [reason.rule for reason in denied.reasons] == [
        "containers.pull", "containers.networks", "containers.capabilities", "containers.writableRootFilesystem",
        "containers.root", "containers.volumeRoots", "network.exposed", "network.privilegedPorts"]


def test_a_writable_volume_needs_its_own_rule_beside_the_root_it_lies_under() -> None:
    writable = launch(volumes=(BindMount(source="/data/x", target="/x", read_only=False),))
    denied = verdict_for(writable, policy(volumeRoots=["/data"]))
    assert [(reason.rule, "/x" in reason.message) for reason in denied.reasons] == [("containers.writableVolumes", True)]
    assert verdict_for(writable, policy(volumeRoots=["/data"], writableVolumes=True)).approved


def test_host_network_is_not_granted_by_listing_it_as_a_network() -> None:
    assert not verdict_for(launch(network="host"), policy(networks=["host"])).approved
    assert verdict_for(launch(network="host"), policy(hostNetwork=True)).approved


@pytest.mark.parametrize(("reference", "pattern", "allowed"), [
    ("busybox:1", "busybox:*", True), ("busybox:5000/evil:1", "busybox:*", False),
    ("busybox.evil.com/x:1", "busybox*", False), ("ghcr.io/me/app:1", "ghcr.io/me/*", True),
    ("ghcr.io/me/a/b:1", "ghcr.io/me/*", False), ("ghcr.io/me/a/b:1", "ghcr.io/me/**", True),
])
def test_image_patterns_stay_within_a_path_component(reference: str, pattern: str, allowed: bool) -> None:
    assert verdict_for(launch(image=reference), policy(images=[pattern])).approved is allowed


def test_volume_roots_are_path_prefixes_not_string_prefixes() -> None:
    rules = policy(volumeRoots=["/data"])
    assert verdict_for(launch(volumes=(BindMount(source="/data", target="/d"),)), rules).approved
    outside = verdict_for(launch(volumes=(BindMount(source="/data2/x", target="/d"),)), rules)
    assert [reason.rule for reason in outside.reasons] == ["containers.volumeRoots"]
    assert "volume source /data2/x lies outside" in outside.reasons[0].message
    assert "(spec.containers.volumeRoots: /data)" in outside.reasons[0].message


@pytest.mark.parametrize(("host_ip", "exposed"), [("127.0.0.1", False), ("127.0.0.2", False), ("::1", False),
                                                  ("0.0.0.0", True), ("::", True), ("192.168.1.5", True)])
def test_only_non_loopback_addresses_need_exposing(host_ip: str, exposed: bool) -> None:
    published = launch(network="bridge", ports=(PublishedPort(host_ip=host_ip, host_port=8080, container_port=80),))
    verdict = verdict_for(published, policy(networks=["bridge"]))
    assert verdict.approved is not exposed
    if exposed:
        (reason,) = verdict.reasons
        assert reason.rule == "network.exposed"
        assert reason.message.startswith(f"published port 8080 would listen on {host_ip} (")
        assert "Policy/workstation allows loopback only there" in reason.message
    assert verdict_for(published, policy(networks=["bridge"], exposed=(host_ip,))).approved


def test_an_exposed_address_may_be_limited_to_some_ports() -> None:
    published = launch(network="bridge", ports=(PublishedPort(host_ip="0.0.0.0", host_port=8080, container_port=80),))
    rules = {"apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": "workstation"},
             "spec": {"containers": {"images": [IMAGE], "networks": ["bridge"]}}}
    only_443 = Policy.model_validate({**rules, "spec": {**rules["spec"], "network": {"exposed": [{"address": "0.0.0.0", "ports": [443]}]}}})
    only_8080 = Policy.model_validate({**rules, "spec": {**rules["spec"], "network": {"exposed": [{"address": "0.0.0.0", "ports": [8080]}]}}})
    assert [reason.rule for reason in verdict_for(published, only_443).reasons] == ["network.exposed"]
    assert verdict_for(published, only_8080).approved


def test_require_digest_refuses_a_tag_and_accepts_a_pin() -> None:
    tagged = verdict_for(launch(), policy(requireDigest=True))
    assert [reason.rule for reason in tagged.reasons] == ["containers.requireDigest"]
    pinned = launch(image="reconciler-test/busybox@sha256:" + "a" * 64)
    assert verdict_for(pinned, policy(images=["reconciler-test/busybox@sha256:*"], requireDigest=True)).approved


def test_an_image_user_of_root_is_not_root_unless_the_spec_says_so() -> None:
    assert verdict_for(launch(image_user="root"), policy()).approved
    assert [reason.rule for reason in verdict_for(launch(user="root"), policy()).reasons] == ["containers.root"]


def test_a_zero_padded_root_uid_is_denied() -> None:
    assert [reason.rule for reason in verdict_for(launch(user="00"), policy()).reasons] == ["containers.root"]


# -- shared ports across workloads

def workload_doc(name: str, spec: str) -> bytes:
    return (f"apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}}}\n"
            f"spec: {spec}\n").encode()


def publisher(name: str, port: int, host_ip: str = "127.0.0.1", protocol: str = "tcp") -> bytes:
    return workload_doc(name, f"{{runtime: container, image: busybox, command: [httpd], "
                              f"ports: [{{containerPort: 80, hostPort: {port}, hostIP: '{host_ip}', protocol: {protocol}}}]}}")


def test_two_containers_publishing_one_port_are_both_rejected_naming_each_other() -> None:
    desired = build_desired({"a.yaml": publisher("a", 8080), "b.yaml": publisher("b", 8080, "0.0.0.0"),
                             "c.yaml": publisher("c", 8081, "127.0.0.2"), "d.yaml": publisher("d", 8081, "127.0.0.3")})
    assert set(desired.rejected) == {ResourceKey("Workload", "a"), ResourceKey("Workload", "b")}
    assert desired.errors["a.yaml"][0].message == (
        "spec.ports: tcp port 8080 on 127.0.0.1 is also declared by Workload/b in b.yaml: give each workload its own port")
    assert "tcp port 8080 on 0.0.0.0 is also declared by Workload/a in a.yaml" in desired.errors["b.yaml"][0].message
    assert {ResourceKey("Workload", "c"), ResourceKey("Workload", "d")} <= set(desired.resources)


def test_tcp_and_udp_on_one_port_do_not_clash() -> None:
    desired = build_desired({"a.yaml": publisher("a", 5353), "b.yaml": publisher("b", 5353, protocol="udp")})
    assert desired.rejected == {} and len(desired.resources) == 2


def test_a_container_and_a_native_workload_on_one_port_clash() -> None:
    native = workload_doc("n", "{command: [srv], port: 8080}")
    desired = build_desired({"c.yaml": publisher("c", 8080), "n.yaml": native})
    assert set(desired.rejected) == {ResourceKey("Workload", "c"), ResourceKey("Workload", "n")}
    assert desired.errors["c.yaml"][0].message.startswith("spec.ports: tcp port 8080 on 127.0.0.1 is also declared by "
                                                          "Workload/n in n.yaml")
    assert desired.errors["n.yaml"][0].message.startswith("spec.port: tcp port 8080 on 127.0.0.1 is also declared by "
                                                          "Workload/c in c.yaml")
