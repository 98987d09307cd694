"""The gateway's hosted route end to end: the real daemon renders the gateway, a workload this host cannot run is
hosted (with consent) at a loopback stand-in of a provider that asserts the injected key and records what it was
sent; what a request would send is checked against the fallback's context classes; each hosted request is evidence.
The root daemon runs the gateway as a user of its own: a key only root reads is refused, one it reads is used."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from reconciler.gateway.classes import UNCLASSIFIED, classes_sent, refused_classes
from reconciler.api.fallback import Context
from reconciler.gateway.spool import append_spooled
from reconciler.record.evidence import verify_chain
from tests.conftest import Workspace, wait_for
from tests.test_engines import document, free_port
from tests.test_gateway import call
from tests.test_policy_gate import plan_row
from tests.tiny_gguf import write_tiny_llama

KEY = "sk-standin-3f9c1e0b7a6d4f2e8c5b"
SECRET_PROMPT = "the launch codes are 0000"  # content: it may reach the provider, never a file here


def test_each_path_sends_the_classes_it_needs() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert classes_sent("chat/completions", chat) == ("prompts", "completions")
    assert classes_sent("completions", {"prompt": "x"}) == ("prompts", "completions")
    assert classes_sent("embeddings", {"input": "x"}) == ("embeddings",)
    tool = {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "1", "content": "42"}]}
    assert classes_sent("chat/completions", tool) == ("prompts", "completions", "tool-results")
    document_part = {"messages": [{"role": "user", "content": [{"type": "text", "text": "read"},
                                                                {"type": "file", "file": {"file_data": "..."}}]}]}
    assert classes_sent("chat/completions", document_part) == ("prompts", "completions", "documents")
    assert classes_sent("audio/transcriptions", {}) == (UNCLASSIFIED,)
    assert classes_sent("chat/completions", {"messages": "not a list"}) == ("prompts", "completions")
    allowed = [Context.prompts, Context.completions]
    assert refused_classes(classes_sent("chat/completions", tool), allowed) == ("tool-results",)
    assert refused_classes((UNCLASSIFIED,), list(Context)) == (UNCLASSIFIED,)


@dataclass
class Provider:
    """A loopback stand-in of a hosted provider: answers only requests carrying the key, records what it got."""

    port: int = field(default_factory=free_port)
    seen: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)  # (path, Authorization, body)
    release: threading.Event = field(default_factory=threading.Event)  # a held stream goes on once this is set

    async def answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, request.headers.get("Authorization"), body))
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        if body.get("messages", [{}])[-1].get("content") == "redirect me":
            return web.Response(status=307, headers={"Location": f"http://127.0.0.1:{self.port}/v1/elsewhere"})
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for word in ("hosted", " words"):
                chunk = {"object": "chat.completion.chunk", "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": word}}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                while body["messages"][-1]["content"] == "hold the stream" and not self.release.is_set():
                    await asyncio.sleep(0.05)
            await response.write(b"data: [DONE]\n\n")
            return response
        return web.json_response({"object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hosted"}}]})

    def serve(self) -> Iterator[None]:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/{tail:.+}", self.answer)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.run_until_complete(runner.cleanup())


def remote(provider: Provider, key_file: Path, **fallback: Any) -> str:
    return document("Workload", "remote", {
        "engine": "llama.cpp", "model": "big", "port": free_port(), "resources": {"gpus": {"count": 1}},
        "fallback": {"provider": "acme", "baseUrl": f"http://127.0.0.1:{provider.port}/v1", "model": "acme-large",
                     "region": "eu", "context": ["prompts", "completions"], "apiKey": {"file": str(key_file)},
                     **fallback}})


def chat(gateway: str, **fields: Any) -> tuple[int, Any, dict[str, Any]]:
    return call(f"{gateway}/v1/chat/completions",
                {"model": "big", "messages": [{"role": "user", "content": SECRET_PROMPT}], **fields})


def hosted_lines(space: Workspace) -> list[dict[str, Any]]:
    return [record for record in space.evidence("remote.yaml") if record["event"] == "hosted-request"]


def test_a_consented_hosted_route_injects_the_key_sends_only_allowed_classes_and_is_evidence(tmp_path: Path) -> None:
    provider = Provider()
    key_file = tmp_path / "keys" / "acme"
    key_file.parent.mkdir()
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    (tmp_path / "space").mkdir()
    space = Workspace(tmp_path / "space")
    gateway_port = free_port()
    space.write("policy.yaml", document("Policy", "test-host", {
        "native": {"trustedEngines": ["llama.cpp", "gateway"]},
        "hosted": {"providers": [{"name": "acme", "regions": ["eu"], "baseUrls": [f"http://127.0.0.1:{provider.port}"]}]}}))
    write_tiny_llama(space.desired / "models" / "tiny.gguf")
    space.write("big.yaml", document("Model", "big", {"source": "models/tiny.gguf"}))
    remote_spec = remote(provider, key_file)
    space.write("remote.yaml", remote_spec)
    space.write("gateway.yaml", document("Workload", "gateway", {
        "engine": "gateway", "port": gateway_port, "args": ["--wait-seconds", "1"],
        "health": {"http": {"path": "/health"}, "periodSeconds": 0.2}}))
    gateway = f"http://127.0.0.1:{gateway_port}"
    serving = provider.serve()
    next(serving)
    space.start_daemon()
    try:
        wait_for(lambda: (s := space.resource_status("gateway.yaml", "gateway")) and s["phase"] == "Running",
                 timeout=60, what="the gateway to run")
        uid = json.loads((space.state / "users.json").read_text())["gateway"]
        space.write("remote.yaml", remote_spec)  # judged again now that the gateway runs: a pass before the resync
        refused = wait_for(lambda: (c := space.condition("remote.yaml", "remote")) and c["reason"] == "SecretUnreadable"
                           and c, timeout=60, what="a key only root reads to be refused")
        assert f"the gateway runs as uid {uid}" in refused["message"] and f"chown {uid} {key_file}" in refused["message"]
        assert f"the gateway runs as uid {uid}" in json.dumps(space.decision_record("remote.yaml", "remote")), \
            "the decision record says why hosting is refused, as the status does"
        status, _, answer = chat(gateway)
        assert (status, answer["error"]["code"]) == (503, "SecretUnreadable"), answer
        assert provider.seen == [], "nothing is sent while the gateway cannot read the key"

        os.chown(key_file, uid, -1)  # as the refusal says
        key_file.chmod(0o400)
        space.write("remote.yaml", remote_spec)
        wait_for(lambda: (s := space.resource_status("remote.yaml", "remote")) and s["phase"] == "PendingApproval",
                 timeout=60, what="remote to wait for consent")
        status, _, answer = chat(gateway)
        assert (status, answer["error"]["code"]) == (503, "PendingApproval") and "consent" in answer["error"]["message"]
        assert provider.seen == [], "nothing is sent without consent"

        spec_hash = plan_row(space, "Workload/remote")["specHash"]
        assert space.cli("approve", "remote", "--hosted", "--spec-hash", spec_hash).returncode == 0
        answer = wait_for(lambda: (a := chat(gateway))[0] == 200 and a, timeout=60, what="the hosted route")
        assert answer[2]["model"] == "acme-large"
        path, authorization, body = provider.seen[-1]
        assert (path, authorization, body["model"]) == ("/v1/chat/completions", f"Bearer {KEY}", "acme-large")
        assert body["messages"][0]["content"] == SECRET_PROMPT

        forged = {"id": "forged", "event": "hosted-request", "resource": "Workload/gateway", "status": 200}
        append_spooled(space.state / "gateway" / "hosted", "gateway", forged)  # as the gateway's user could
        streamed = urllib.request.Request(f"{gateway}/v1/chat/completions", json.dumps(
            {"model": "big", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(streamed, timeout=30) as stream:
            assert stream.headers["X-Accel-Buffering"] == "no"
            events = [line for line in stream.read().decode().splitlines() if line.startswith("data: ")]
        assert len(events) == 3 and events[-1] == "data: [DONE]"
        sent = len(provider.seen)
        status, _, answer = call(f"{gateway}/v1/embeddings", {"model": "big", "input": SECRET_PROMPT})
        assert (status, answer["error"]["code"]) == (403, "ContextNotAllowed") and "embeddings" in answer["error"]["message"]
        status, _, answer = chat(gateway, messages=[{"role": "user", "content": "x"},
                                                    {"role": "tool", "tool_call_id": "1", "content": SECRET_PROMPT}])
        assert status == 403 and "tool-results" in answer["error"]["message"], answer
        assert len(provider.seen) == sent, "a refused class never reaches the provider"

        redirected = urllib.request.Request(f"{gateway}/v1/chat/completions", json.dumps(
            {"model": "big", "messages": [{"role": "user", "content": "redirect me"}]}).encode(),
            {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as answered:  # urllib itself follows only GET and HEAD redirects
            urllib.request.urlopen(redirected, timeout=30)
        assert answered.value.code == 307
        assert [seen[0] for seen in provider.seen].count("/v1/elsewhere") == 0, "a redirect is never followed"

        lines = wait_for(lambda: len(h := hosted_lines(space)) >= 5 and h, timeout=10, what="the hosted evidence")
        sent_line = next(line for line in lines if line["status"] == 200)
        assert {key: sent_line[key] for key in ("resource", "model", "provider", "region", "path", "classes")} == {
            "resource": "Workload/remote", "model": "big", "provider": "acme", "region": "eu",
            "path": "chat/completions", "classes": ["prompts", "completions"]}
        assert sent_line["bytesOut"] > len(SECRET_PROMPT) and sent_line["bytesIn"] > 0 and sent_line["time"]
        assert [(line["status"], line["outcome"]) for line in lines[-3:]] == [(403, "ContextNotAllowed")] * 2 + [(307, "Sent")]
        assert lines[-3]["classes"] == ["embeddings"] and lines[-2]["classes"] == ["prompts", "completions", "tool-results"]
        assert verify_chain(space.desired / "remote.evidence.jsonl").ok, "the daemon and the gateway keep one chain"
        assert "forged" not in {line.get("id") for line in space.evidence("gateway.yaml")}, "a chain of no hosted workload"

        listed = space.cli("status", "-o", "json").stdout
        shown = listed + space.cli("describe", "remote").stdout
        route = next(row for row in json.loads(listed) if row["name"] == "big")["gatewayRoute"]
        assert route["state"] == "Hosted" and route["hosted"]["apiKey"] == {"file": str(key_file)}, route
        assert route["summary"].startswith(f"Hosted: Workload/remote at acme (eu) http://127.0.0.1:{provider.port}/v1")
        assert "chat/completions to acme (eu): prompts, completions;" in shown, "describe shows hosted requests as events"
        logs = [("the daemon's log", space.daemon_log.read_text())]
        for where, text in [("shown", shown), *logs, *_every_file(space.desired, space.state)]:
            assert KEY not in text, f"the key is in {where}"
            assert SECRET_PROMPT not in text, f"content is in {where}"

        held = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=60)
        held.request("POST", "/v1/chat/completions", json.dumps({"model": "big", "stream": True, "messages": [
            {"role": "user", "content": "hold the stream"}]}), {"Content-Type": "application/json"})
        stream = held.getresponse()
        received = stream.read1(65536)
        assert b"data: " in received, received
        assert space.cli("deny", "remote", "--hosted", "--spec-hash", spec_hash).returncode == 0  # consent withdrawn
        status, _, answer = wait_for(lambda: (a := chat(gateway))[0] != 200 and a, timeout=60, what="the refusal")
        assert status == 503 and answer["error"]["code"] == "PolicyDenied", answer
        provider.release.set()
        received += stream.read()
        assert received.endswith(b"data: [DONE]\n\n") and b"event: error" not in received, "a running stream is not moved"
        held.close()
        assert space.cli("approve", "remote", "--hosted", "--spec-hash", spec_hash).returncode == 0
        wait_for(lambda: chat(gateway)[0] == 200, timeout=60, what="the hosted route again")
        space.write("remote.yaml", remote(provider, key_file, model="acme-larger"))  # a new spec
        status, _, answer = wait_for(lambda: (a := chat(gateway))[0] != 200 and a, timeout=60,
                                     what="consent to end with the spec it was given for")
        assert (status, answer["error"]["code"]) == (503, "PendingApproval") and "consent" in answer["error"]["message"]
        assert provider.seen[-1][2]["model"] == "acme-large", "never sent on under a spec nobody consented to"
    finally:
        space.cleanup()
        next(serving, None)


def _every_file(*folders: Path) -> Iterator[tuple[str, str]]:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield str(path), path.read_text(errors="replace")
