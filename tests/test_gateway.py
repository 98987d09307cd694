"""The gateway end to end: the real daemon renders it, the real llama.cpp server (llama-cpp-python) on the tiny GGUF
serves behind it; routes follow the status files without a restart; streams pass through and are cancelled."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import Workspace, wait_for
from tests.test_engines import document, free_port
from tests.tiny_gguf import write_tiny_llama

POLICY = document("Policy", "test-host", {"native": {"trustedEngines": ["llama.cpp", "gateway"]}})
# A tcp check: llama-cpp-python's default check, GET /v1/models, takes the model's lock, and its server ends a running
# generation for any request that waits on that lock (--interrupt_requests, on by default) as if its client had left.
TCP_CHECK = {"tcp": {}, "periodSeconds": 0.5}


@dataclass
class Stack:
    space: Workspace
    gateway: str  # http://127.0.0.1:PORT
    chat: str  # the llama.cpp server's own /v1 base

    def running(self, spec_file: str, name: str) -> dict[str, Any]:
        return wait_for(lambda: (s := self.space.resource_status(spec_file, name)) and s["phase"] == "Running" and s,
                        timeout=90, what=f"{name} to be Running")


def llama_server(name: str, model: str, port: int, **health: Any) -> str:
    return document("Workload", name, {"engine": "llama.cpp", "model": model, "port": port,
                                       "llamaCpp": {"contextSize": 2048},
                                       "health": {**TCP_CHECK, **health}})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pytest.importorskip("llama_cpp")
    space = Workspace(tmp_path_factory.mktemp("gateway"))
    space.write("policy.yaml", POLICY)
    write_tiny_llama(space.desired / "models" / "tiny.gguf")
    chat_port, gateway_port = free_port(), free_port()
    space.write("chat.yaml", document("Model", "tiny", {"source": "models/tiny.gguf", "aliases": ["gpt-4o-mini"]}) + "---\n"
                + llama_server("chat", "tiny", chat_port))
    space.write("gateway.yaml", document("Workload", "gateway", {
        "engine": "gateway", "port": gateway_port, "args": ["--wait-seconds", "3", "--max-requests", "150", "--body-seconds", "2"],
        "health": {"http": {"path": "/health"}, "periodSeconds": 0.2}}))
    space.start_daemon()
    try:
        built = Stack(space, f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{chat_port}/v1")
        built.running("gateway.yaml", "gateway")
        built.running("chat.yaml", "chat")
        yield built
    finally:
        space.cleanup()


def call(url: str, body: Any = None, method: str | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any, dict[str, Any]]:
    """(status, headers, JSON body) of a request; an HTTP error is an answer like any other."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.headers, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers, json.load(refused)


def completion(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "the", "max_tokens": 4, **fields}


def test_a_completion_goes_to_the_models_server_and_the_id_is_the_models_name(stack: Stack) -> None:
    status, _, listed = call(f"{stack.gateway}/v1/models")
    assert status == 200 and [(m["id"], m["state"], m.get("aliasOf")) for m in listed["data"]] == [
        ("tiny", "Ready", None), ("gpt-4o-mini", "Ready", "tiny")]
    _, _, direct = call(f"{stack.chat}/models")
    assert [m["id"] for m in direct["data"]] == ["tiny"], "the engine serves the Model's name, not the file's path"
    for asked in ("tiny", "gpt-4o-mini"):
        status, _, answer = call(f"{stack.gateway}/v1/completions", completion(asked))
        assert status == 200, answer
        assert answer["model"] == "tiny" and answer["usage"]["completion_tokens"] > 0


def test_a_stream_passes_through_event_by_event(stack: Stack) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    request = urllib.request.Request(f"{stack.gateway}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        assert answer.headers["X-Accel-Buffering"] == "no"
        events = [line for line in answer.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert len(chunks) >= 3 and all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)


def _open_stream(gateway: str, max_tokens: int) -> tuple[socket.socket, bytes]:
    """A streaming completion on a raw socket, read up to its first event."""
    host, port = gateway.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps(completion("tiny", max_tokens=max_tokens, stream=True)).encode()
    client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while b"data: " not in received:
        chunk = client.recv(65536)
        assert chunk, f"the stream ended before its first event: {received!r}"
        received += chunk
    return client, received


def test_a_client_that_goes_away_stops_the_generation(stack: Stack) -> None:
    """llama-cpp-python holds its model's lock for a whole generation and prints its token count when one ends: a
    request sent after the client left is served once the lock is free, and no 1900-token generation ended before."""
    log = Path(stack.running("chat.yaml", "chat")["logFile"])
    start = log.stat().st_size
    client, _ = _open_stream(stack.gateway, max_tokens=1900)  # seconds of generation if nobody stops it
    client.close()
    status, _, answer = call(f"{stack.chat}/completions", completion("tiny"))
    assert status == 200 and answer["usage"]["completion_tokens"] > 0
    with log.open("rb") as written:
        written.seek(start)
        runs = [int(n) for n in re.findall(r"\beval time =.*/\s*(\d+) runs", written.read().decode(errors="replace"))]
    assert runs and max(runs) < 100, f"generations that ran to their end meanwhile: {runs} tokens"


def test_an_unknown_model_is_404_and_lists_what_exists(stack: Stack) -> None:
    for name in ("gpt-4o", "../../etc/passwd", "tiny/../tiny", "x" * 5000):
        status, _, answer = call(f"{stack.gateway}/v1/chat/completions", {"model": name, "messages": []})
        assert status == 404 and answer["error"]["code"] == "ModelNotFound", answer
        assert "(models: tiny, gpt-4o-mini)" in answer["error"]["message"] and len(answer["error"]["message"]) < 300


def test_bad_requests_get_clear_errors(stack: Stack) -> None:
    status, _, answer = call(f"{stack.gateway}/v1/completions", b"{not json")
    assert (status, answer["error"]["code"]) == (400, "InvalidJSON")
    status, _, answer = call(f"{stack.gateway}/v1/completions", {"prompt": "no model"})
    assert (status, answer["error"]["code"]) == (400, "ModelRequired")
    status, _, answer = call(f"{stack.gateway}/v1/completions", [1, 2])
    assert (status, answer["error"]["code"]) == (400, "ModelRequired")
    status, _, answer = call(f"{stack.gateway}/v1/chat/completions", method="GET")
    assert status == 405 and answer["error"]["type"] == "invalid_request_error"
    for path in ("/v1/%2e%2e/health", "/v1/a/../../health", "/v1/a//b"):
        connection = http.client.HTTPConnection(stack.gateway.removeprefix("http://"), timeout=30)
        connection.request("POST", path, json.dumps(completion("tiny")), {"Content-Type": "application/json"})
        reply = connection.getresponse()
        assert reply.status == 404, (path, reply.status)
        assert json.load(reply)["error"]["code"] in ("NotFound", "ModelNotFound")
    huge = json.dumps(completion("tiny", prompt="word " * 2_000_000)).encode()  # ~10 MB
    status, _, answer = call(f"{stack.gateway}/v1/completions", huge)
    assert (status, answer["error"]["code"]) == (413, "RequestTooLarge")
    assert call(f"{stack.gateway}/v1/completions", completion("tiny"))[0] == 200, "still serving"


def test_a_client_that_trickles_its_body_is_cut_off_and_others_are_served_meanwhile(stack: Stack) -> None:
    """Without a bound on the body's arrival such a client held one of the --max-requests places for as long as it
    liked, and as many of them as places shut every other client out."""
    host, port = stack.gateway.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)), timeout=30)
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"model\": ")
    assert call(f"{stack.gateway}/v1/completions", completion("tiny"))[0] == 200, "served while the slow one waits"
    answer = b""
    while chunk := slow.recv(65536):  # the gateway answers after --body-seconds and closes
        answer += chunk
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in answer, answer[:300]


def test_a_hundred_concurrent_streams_all_complete_in_bounded_memory(stack: Stack) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    gateway = psutil.Process(stack.running("gateway.yaml", "gateway")["pid"])
    before = gateway.memory_info().rss

    async def one(session: Any) -> list[str]:
        async with session.post(f"{stack.gateway}/v1/completions", json=completion("tiny", stream=True)) as answer:
            assert answer.status == 200
            return [line for line in (await answer.text()).splitlines() if line.startswith("data: ")]

    async def all_of_them() -> list[list[str]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            return await asyncio.gather(*(one(session) for _ in range(100)))

    streams = asyncio.run(all_of_them())
    assert all(events[-1] == "data: [DONE]" and len(events) >= 2 for events in streams)
    assert gateway.memory_info().rss - before < 64 * 2**20


def test_routes_show_in_status_output_and_describe_and_the_gateway_counts_per_model_and_route(stack: Stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert call(f"{stack.gateway}/v1/completions", completion("gpt-4o-mini"))[0] == 200
    assert call(f"{stack.gateway}/v1/completions", completion("made-up-model-name"))[0] == 404
    for output in ("json", "yaml"):
        rows = yaml.safe_load(stack.space.cli("status", "-o", output).stdout)
        route = next(row for row in rows if (row["kind"], row["name"]) == ("Model", "tiny"))["gatewayRoute"]
        assert (route["state"], route["backends"], route["aliases"]) == (
            "Ready", [{"workload": "chat", "url": stack.chat}], ["gpt-4o-mini"]), route
        assert route["summary"] == f"Workload/chat {stack.chat}"
    described = stack.space.cli("describe", "model/tiny").stdout
    assert "Served by    Workload/chat\n" in described, described
    assert f"{stack.gateway}/v1: any process on this host, as model 'tiny', 'gpt-4o-mini'" in described, described
    assert f"Route        Workload/chat {stack.chat}" in described

    with urllib.request.urlopen(f"{stack.gateway}/metrics", timeout=30) as answer:
        samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                   for family in text_string_to_metric_families(answer.read().decode()) for sample in family.samples}
    chat = (("model", "tiny"), ("route", "Workload/chat"))
    assert samples[("gateway_requests_total", (("code", "200"), *chat))] >= 2
    assert samples[("gateway_errors_total", (("model", "unknown"), ("reason", "ModelNotFound"), ("route", "none")))] >= 1
    assert samples[("gateway_bytes_total", (("direction", "in"), *chat))] > 0
    assert samples[("gateway_time_to_first_byte_seconds_count", chat)] >= 2
    assert samples[("gateway_request_duration_seconds_count", chat)] >= 2
    assert not any("made-up" in str(labels) for _, labels in samples), "a client's name never becomes a label"


def test_routes_follow_the_status_files_without_a_restart(stack: Stack) -> None:
    gateway_pid = stack.running("gateway.yaml", "gateway")["pid"]
    stack.space.write("ghost.yaml", document("Model", "ghost", {"source": "models/ghost.gguf"}) + "---\n"
                      + llama_server("ghost-server", "ghost", free_port()))
    answer = wait_for(lambda: (a := call(f"{stack.gateway}/v1/completions", completion("ghost")))[0] != 404 and a,
                      timeout=30, what="the new model in the gateway's routes")
    status, _, body = answer
    # the routes follow the daemon's statuses as it holds them, which may be a moment ahead of the status file
    reason = wait_for(lambda: stack.space.condition("ghost.yaml", "ghost-server"), timeout=10, what="ghost's status file")
    assert status == 503 and body["error"]["code"] == "ModelMissing" == reason["reason"], body
    assert "Workload/ghost-server" in body["error"]["message"] and "ghost.gguf" in body["error"]["message"]
    with urllib.request.urlopen(f"{stack.gateway}/metrics", timeout=30) as metrics:  # counted by the Model it named
        assert 'gateway_errors_total{model="ghost",reason="ModelMissing",route="none"}' in metrics.read().decode()

    stack.space.write("slow.yaml", document("Model", "slow", {"source": "models/tiny.gguf"}) + "---\n"
                      + llama_server("slow-server", "slow", free_port(), initialDelaySeconds=600))
    wait_for(lambda: (s := stack.space.resource_status("slow.yaml", "slow-server")) and s["phase"] == "Starting",
             timeout=60, what="slow-server to be starting")
    status, headers, body = call(f"{stack.gateway}/v1/completions", completion("slow"))
    assert status == 503 and body["error"]["code"] == "Starting" and headers["Retry-After"] == "5", body
    assert "still starting" in body["error"]["message"]
    codes = asyncio.run(_many(f"{stack.gateway}/v1/completions", completion("slow"), 300))
    assert codes.count((503, "Starting")) == 150 and codes.count((503, "GatewayBusy")) == 150, codes

    shown = stack.space.cli("status").stdout
    routes = shown[shown.index("Gateway routes:"):]
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in routes.splitlines()[2:] if line.strip()}
    assert rows["tiny"] == f"Workload/chat {stack.chat}" and rows["gpt-4o-mini"] == "alias of Model/tiny"
    assert rows["ghost"].startswith("Unavailable: Workload/ghost-server: ModelMissing")
    assert stack.running("gateway.yaml", "gateway")["pid"] == gateway_pid, "picked up without a restart"


async def _many(url: str, body: dict[str, Any], count: int) -> list[tuple[int, str]]:
    """(status, error code) of `count` requests sent at once."""
    import aiohttp

    async def one(session: Any) -> tuple[int, str]:
        async with session.post(url, json=body) as answer:
            return answer.status, (await answer.json())["error"]["code"]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(count))))


def _chat_killed_mid_stream(stack: Stack) -> str:
    """What a client of a long stream receives when the chat server is killed after its first event."""
    chat = stack.running("chat.yaml", "chat")
    client, received = _open_stream(stack.gateway, max_tokens=1900)
    os.kill(chat["pid"], signal.SIGKILL)
    while chunk := client.recv(65536):
        received += chunk
    client.close()
    return received.decode(errors="replace")


def test_an_engine_dying_mid_stream_ends_it_with_an_error_event(stack: Stack) -> None:
    text = _chat_killed_mid_stream(stack)
    assert "event: error" in text and "UpstreamFailed" in text and "Workload/chat" in text, text[-500:]
    assert "[DONE]" not in text


def test_a_stream_cut_mid_way_is_never_retried_on_another_backend(stack: Stack) -> None:
    """Two Ready servers of the Model: the stream goes to `chat` (the least busy, then by name); when it dies after the
    first byte the client gets the error event, and `twin` never sees the request."""
    twin_port = free_port()
    stack.space.write("twin.yaml", llama_server("twin", "tiny", twin_port))
    try:
        twin_log = Path(stack.running("twin.yaml", "twin")["logFile"])
        wait_for(lambda: "Workload/twin" in stack.space.cli("status").stdout.split("Gateway routes:")[-1],
                 timeout=30, what="twin in the gateway's routes")
        start = twin_log.stat().st_size
        text = _chat_killed_mid_stream(stack)
        assert "event: error" in text and "Workload/chat" in text and "[DONE]" not in text, text[-500:]
        with twin_log.open("rb") as written:
            written.seek(start)
            assert b"eval time" not in written.read(), "the request was retried on twin"
        assert call(f"http://127.0.0.1:{twin_port}/v1/completions", completion("tiny"))[0] == 200
        with twin_log.open("rb") as written:
            written.seek(start)
            assert b"eval time" in written.read(), "twin's log shows a generation it served (the check above can fail)"
    finally:
        (stack.space.desired / "twin.yaml").unlink()
