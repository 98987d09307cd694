"""The README's quickstart, run as written: its spec file, the real daemon, the real llama.cpp server (llama-cpp-python)
on a tiny generated model, `reconciler status`, and its curl request through the gateway. Only the ports change,
to free ones, so the test cannot collide with what else listens on this machine."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import Workspace, wait_for
from tests.test_engines import free_port
from tests.tiny_gguf import write_tiny_llama

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart() -> str:
    section = README.read_text(encoding="utf-8").split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    return section


def test_the_readme_quickstart_serves_a_chat_completion_through_the_gateway(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    section = quickstart()
    (spec,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    request_body = json.loads(re.search(r"-d '(\{.*?\})'", section)[1])
    gateway_url = re.search(r"curl (http://127\.0\.0\.1:(\d+))(/v1/\S+)", section)
    chat_port, gateway_port = free_port(), free_port()
    ports = {"8081": str(chat_port), gateway_url[2]: str(gateway_port)}
    moved = re.sub(r"(?m)^(  port: )(\d+)", lambda found: found[1] + ports[found[2]], spec)
    assert [line for line in moved.splitlines() if line not in spec.splitlines()] == [
        f"  port: {chat_port}                               # on 127.0.0.1 unless host and the Policy say otherwise",
        f"  port: {gateway_port}"], "the quickstart's ports moved: only they may differ from the README"
    assert "~/ai/chat.yaml" in section and "~/ai/models/chat.gguf" in section

    space = Workspace(tmp_path)
    try:
        space.write("chat.yaml", moved)
        write_tiny_llama(space.desired / "models" / "chat.gguf")
        assert space.cli("validate").returncode == 0
        space.start_daemon()
        for name in ("chat-server", "gateway"):
            wait_for(lambda: (space.condition("chat.yaml", name) or {}).get("status") == "True", timeout=120,
                     what=f"{name} to be Ready (daemon log: {space.daemon_log})")
        status = space.cli("status")
        assert status.returncode == 0, status.stderr
        assert re.search(r"chat-server\s.*True", status.stdout) and re.search(r"gateway\s.*True", status.stdout)

        request = urllib.request.Request(f"http://127.0.0.1:{gateway_port}{gateway_url[3]}",
                                         json.dumps(request_body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            reply = json.load(answer)
        assert reply["model"] == "chat" and reply["choices"][0]["message"]["role"] == "assistant"
        assert yaml.safe_load((space.desired / "chat.status.yaml").read_text())["errors"] == []
    finally:
        space.stop_daemon(signal.SIGTERM)
        assert space.cli("down").returncode == 0
        space.cleanup()
