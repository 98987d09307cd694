"""Where a Model's bytes come from, through the real CLI and daemon: an unreachable source is said to be one (and is
waited for), credentials in its URL reach no output, read-only commands make no requests, the Policy says which
hosts and networks models may be fetched from, and a special file is never read."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from tests.artifact_server import LOOPBACK_SOURCES, ArtifactServer
from tests.conftest import POLICY_YAML, Workspace, wait_for
from tests.test_engines import document
from tests.tiny_gguf import write_tiny_llama


@pytest.fixture
def tiny(tmp_path: Path) -> bytes:
    return write_tiny_llama(tmp_path / "tiny.gguf").read_bytes()


def allow_loopback(workspace: Workspace) -> None:
    workspace.write("policy.yaml", POLICY_YAML + LOOPBACK_SOURCES)


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def model(workspace: Workspace) -> dict:
    return workspace.resource_status("model.yaml", "tiny") or {}


def reason(status: dict) -> str | None:
    return status["conditions"][-1]["reason"] if status.get("conditions") else None


def test_an_unreachable_source_without_a_size_is_source_unreachable_with_its_url_and_error(workspace: Workspace) -> None:
    allow_loopback(workspace)
    url = f"http://127.0.0.1:{closed_port()}/tiny.gguf"
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": "a" * 64}))
    workspace.cli("apply")
    status = model(workspace)
    assert reason(status) == "SourceUnreachable", status
    assert url in status["message"] and "ConnectionError" in status["message"], status["message"]
    assert "declare spec.size" not in status["message"]


def test_a_header_read_that_failed_is_tried_again_with_back_off_and_the_model_comes(
        workspace: Workspace, server: ArtifactServer, tiny: bytes) -> None:
    allow_loopback(workspace)
    url = server.add("tiny.gguf", tiny, status=503)  # the host is down for now
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": hashlib.sha256(tiny).hexdigest()}))
    workspace.start_daemon("--resync", "3600")
    wait_for(lambda: reason(model(workspace)) == "SourceUnreachable", timeout=20, what="the outage in the status")
    assert "HTTP 503" in model(workspace)["message"] and "next try in 5s" in model(workspace)["message"]
    server.add("tiny.gguf", tiny)  # back: no edit, no restart, and the 5 s back-off is the only wait
    wait_for(lambda: model(workspace).get("phase") == "Available", timeout=30, what="the model after the outage")


def test_credentials_in_a_source_url_reach_no_output(workspace: Workspace, server: ArtifactServer) -> None:
    allow_loopback(workspace)
    server.add("bad.gguf?token=t0ken", b"not a gguf file at all", status=404)
    url = f"http://alice:s3cret@127.0.0.1:{server.port}/bad.gguf?token=t0ken"
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": "b" * 64}))
    outputs = [workspace.cli(*command) for command in (("apply",), ("plan",), ("status",), ("describe", "Model/tiny"))]
    workspace.start_daemon("--resync", "3600")
    wait_for(lambda: "no GGUF header" in workspace.daemon_log.read_text(), timeout=20, what="the daemon's header read")
    workspace.stop_daemon()
    texts = [out.stdout + out.stderr for out in outputs] + [workspace.daemon_log.read_text()]
    texts += [path.read_text() for pattern in ("*.status.yaml", "*.evidence.jsonl") for path in workspace.desired.glob(pattern)]
    assert f"127.0.0.1:{server.port}/bad.gguf" in texts[0] + texts[2], texts  # the URL itself is shown
    for text in texts:
        assert "s3cret" not in text and "alice" not in text and "t0ken" not in text, text


def test_status_and_describe_make_no_requests_and_show_what_the_daemon_saw(
        workspace: Workspace, server: ArtifactServer, tiny: bytes) -> None:
    allow_loopback(workspace)
    url = server.add("tiny.gguf", tiny, status=503)
    digest = hashlib.sha256(tiny).hexdigest()
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": digest}) + "---\n" +
                    document("Model", "sized", {"source": url, "sha256": digest, "size": len(tiny)}))
    workspace.cli("apply")
    seen = len(server.seen)
    assert seen > 0
    shown = workspace.cli("status").stdout
    described = workspace.cli("describe", "Model/tiny").stdout, workspace.cli("describe", "Model/sized").stdout
    assert len(server.seen) == seen, "status and describe sent requests"
    rows = {line.split()[0]: line for line in shown.splitlines()}
    assert "waiting for default" in rows["tiny"] and "HTTP 503" in described[0], (shown, described)
    assert "cannot fetch" in rows["sized"] and "HTTP 503" in described[1], (shown, described)  # the fetch as it failed


def test_an_unreachable_preferred_variant_is_waited_for_unless_the_spec_says_next(
        workspace: Workspace, server: ArtifactServer, tiny: bytes, tmp_path: Path) -> None:
    allow_loopback(workspace)
    small = write_tiny_llama(tmp_path / "small.gguf", name="another-tiny-llama").read_bytes()
    variants = [{"name": "best", "source": server.add("best.gguf", tiny, status=503),
                 "sha256": hashlib.sha256(tiny).hexdigest()},
                {"name": "small", "source": server.add("small.gguf", small), "sha256": hashlib.sha256(small).hexdigest()}]
    workspace.write("model.yaml", document("Model", "tiny", {"variants": variants}))
    workspace.cli("apply")
    status = model(workspace)
    assert reason(status) == "SourceUnreachable" and "waiting for best" in status["message"], status
    assert "HTTP 503" in status["message"] and "spec.size" not in status["message"]
    assert not [seen for seen in server.gets("small.gguf") if seen.range is None], "the next one is not downloaded"

    workspace.write("model.yaml", document("Model", "tiny", {"variants": variants, "onUnreachable": "NextVariant"}))
    workspace.cli("apply")
    status = model(workspace)
    assert status["phase"] == "Available" and status["artifact"]["variant"] == "small", status
    assert "rejected best: SourceUnreachable" in status["message"], status["message"]


def test_loopback_sources_are_refused_unless_the_policy_lists_their_network(
        workspace: Workspace, server: ArtifactServer, tiny: bytes) -> None:
    url = server.add("tiny.gguf", tiny)
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": hashlib.sha256(tiny).hexdigest()}))
    workspace.cli("apply")
    status = model(workspace)
    assert reason(status) == "SourceRefused" and "internalNetworks" in status["message"], status
    assert not server.seen, "a refused source gets no request"

    # listed, loopback is allowed; a redirect from there to a host not listed is judged where it leads
    workspace.write("policy.yaml", POLICY_YAML + "  models:\n    internalNetworks: [127.0.0.0/8]\n    sources: [127.0.0.1]\n")
    workspace.cli("apply")
    assert model(workspace).get("phase") == "Available", model(workspace)
    hop = server.add("hop.gguf", b"", location=url.replace("127.0.0.1", "localhost").replace("tiny", "other"))
    server.add("other.gguf", tiny)
    workspace.write("model.yaml", document("Model", "tiny", {"source": hop, "sha256": "c" * 64}))
    workspace.cli("apply")
    status = model(workspace)
    assert reason(status) == "SourceRefused" and "localhost" in status["message"], status
    assert "not among the hosts" in status["message"] and server.gets("hop.gguf") and not server.gets("other.gguf")


def test_allowing_a_refused_source_in_the_policy_fetches_it_without_waiting_out_its_back_off(
        workspace: Workspace, server: ArtifactServer, tiny: bytes) -> None:
    url = server.add("tiny.gguf", tiny)
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": hashlib.sha256(tiny).hexdigest()}))
    workspace.start_daemon("--resync", "3600")
    # the third refusal backs off 20 s: the edit below must not wait for it
    wait_for(lambda: "next try in 20s" in model(workspace).get("message", ""), timeout=40, what="three refusals")
    assert not server.seen
    allow_loopback(workspace)
    wait_for(lambda: model(workspace).get("phase") == "Available", timeout=15, what="the model once the Policy allows it")


def test_no_byte_of_what_a_source_answers_is_quoted(workspace: Workspace, server: ArtifactServer) -> None:
    allow_loopback(workspace)
    url = server.add("admin", b"<html>INTERNAL-ADMIN-PAGE</html>")
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": "e" * 64}))
    said = workspace.cli("apply")
    said_too = workspace.cli("plan")
    texts = [said.stdout + said.stderr, said_too.stdout + said_too.stderr, (workspace.desired / "model.status.yaml").read_text()]
    assert "no GGUF header in what the source sent" in texts[0], texts[0]
    for text in texts:
        assert "INTERNAL" not in text and "<html" not in text and "3c 68 74 6d" not in text, text


def test_a_fifo_as_a_model_source_blocks_nothing(workspace: Workspace) -> None:
    os.mkfifo(workspace.desired / "model.gguf")
    workspace.write("model.yaml", document("Model", "tiny", {"source": "model.gguf"}) + "---\n" +
                    document("Model", "other", {"source": (workspace.desired / "model.gguf").as_uri(), "sha256": "d" * 64}))
    started = time.monotonic()
    workspace.cli("apply", timeout=30)
    shown = workspace.cli("status", timeout=30).stdout
    assert time.monotonic() - started < 30
    status = model(workspace)
    assert reason(status) == "InvalidModel" and "a FIFO, not a regular file" in status["message"], status
    other = workspace.resource_status("model.yaml", "other") or {}
    assert reason(other) == "InvalidModel" and "a FIFO" in other["message"], other
    assert "a FIFO, not a regular file" in shown


# -- pure parts: the judge of sources, and the redaction every output goes through ----------------------------------


def test_the_source_judge_refuses_non_public_addresses_and_hosts_not_listed() -> None:
    from reconciler.api.policy import ModelPolicy
    from reconciler.gate.sources import source_refusal

    open_rules, lan = ModelPolicy(), ModelPolicy(internal_networks=["192.168.1.0/24"])
    assert source_refusal("huggingface.co", 443, ["18.164.1.2"], open_rules) is None
    for address in ("127.0.0.1", "::1", "10.1.2.3", "169.254.169.254", "::ffff:127.0.0.1", "fe80::1%2", "0.0.0.0"):
        assert "non-public" in (source_refusal("evil.example", 80, [address], open_rules) or ""), address
    assert "non-public" in (source_refusal("mixed.example", 80, ["18.164.1.2", "127.0.0.1"], open_rules) or "")
    assert source_refusal("nas.lan", 8080, ["192.168.1.5"], lan) is None
    assert "non-public" in (source_refusal("nas.lan", 8080, ["192.168.2.5"], lan) or "")
    listed = ModelPolicy(sources=["huggingface.co", "*.hf.co", "nas.lan:8080"], internal_networks=["192.168.1.0/24"])
    assert source_refusal("cdn-lfs.hf.co", 443, ["18.164.1.2"], listed) is None
    assert source_refusal("NAS.lan.", 8080, ["192.168.1.5"], listed) is None
    for host, port in (("a.b.hf.co", 443), ("evil.com", 443), ("nas.lan", 8081), ("huggingface.co.evil.com", 443)):
        assert "not among the hosts" in (source_refusal(host, port, ["18.164.1.2"], listed) or ""), host
    with pytest.raises(ValueError):
        ModelPolicy(sources=["https://huggingface.co/"])
    with pytest.raises(ValueError):
        ModelPolicy(internal_networks=["not-a-network"])


def test_redaction_hides_userinfo_and_query_values_wherever_a_url_is_quoted() -> None:
    from reconciler.base.redact import redact, scrub

    assert redact("no GGUF header (http://alice:s3cret@h:1/m.gguf?token=t0k&x=1)") == \
        "no GGUF header (http://***@h:1/m.gguf?token=***&x=***)"
    assert redact("ssh://git@host/r and ssh://git:pw@host/r") == "ssh://git@host/r and ssh://git:***@host/r"
    assert redact('http://h:1 "GET /m.gguf?token=t0k HTTP/1.1" 404') == 'http://h:1 "GET /m.gguf?token=*** HTTP/1.1" 404'
    quoted = "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /m.gguf?token=t0k (alice:s3cret)"
    assert "t0k" not in scrub(quoted, "http://alice:s3cret@h:1/m.gguf?token=t0k")
    assert "s3cret" not in scrub(quoted, "http://alice:s3cret@h:1/m.gguf?token=t0k")


def test_a_connection_goes_to_the_address_judged_not_to_a_second_answer(
        server: ArtifactServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name answers an allowed address when judged and another one right after. The stand-in is
    for the resolver only (a rebinding DNS server is not part of this host); the connection and server are real."""
    from reconciler.drive.pinned import pinned_session

    url = server.add("tiny.gguf", b"GGUF-bytes").replace("127.0.0.1", "rebind.test")
    answers = iter(["127.0.0.1"] + ["127.0.0.2"] * 10)  # nothing listens on 127.0.0.2
    real = socket.getaddrinfo

    def resolver(host: str, port: object, *args: object, **kwargs: object) -> list:
        if host == "rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    judged: list[list[str]] = []

    def judge(host: str, port: int, addresses: list[str]) -> str | None:
        judged.append(addresses)
        return None if addresses == ["127.0.0.1"] else f"{host} is {addresses}"

    with pinned_session(judge) as http:
        assert http.get(url, timeout=5).content == b"GGUF-bytes"
    assert judged == [["127.0.0.1"]]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_log_line_and_traceback_hides_url_credentials(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from reconciler.control import logfmt

    logfmt.configure("DEBUG", log_format)
    try:
        logging.getLogger("urllib3.connectionpool").debug('%s "GET %s HTTP/1.1" 404', "http://h:1", "/m?token=t0k")
        try:
            raise ConnectionError("cannot reach http://alice:s3cret@h/m?token=t0k")
        except ConnectionError:
            logging.getLogger("reconciler").exception("fetching failed")
    finally:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    written = capsys.readouterr().err
    assert "fetching failed" in written and "GET /m?token=***" in written and "http://***@h/m?token=***" in written
    assert "s3cret" not in written and "alice" not in written and "t0k" not in written
