"""What the reconciler's Docker client sends to an engine on a local socket: the engine's API and nothing of the
user's web settings. A real unix socket server stands in for the engine and keeps each request's headers."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from reconciler.observe.docker_engine import DockerEngine

VERSION = json.dumps({"ApiVersion": "1.41", "Version": "20.10.24", "MinAPIVersion": "1.12"}).encode()


def serve(path: Path, heads: list[str]) -> socket.socket:
    """Answer every request on `path` with the engine's version, one request per connection; keep each request head."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def answer() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := connection.recv(4096)):
                    head += chunk
                heads.append(head.decode("latin-1"))
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(VERSION), VERSION))

    threading.Thread(target=answer, daemon=True).start()
    return server


def test_an_engine_on_a_local_socket_is_sent_no_credentials_or_proxy_settings_meant_for_web_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc entry for a web server on `localhost` went to the engine as a Basic Authorization header (the SDK's
    requests session read it for every call, as it read the proxy variables: a scan of the environment per call)."""
    (tmp_path / ".netrc").write_text("machine localhost login someone password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    heads: list[str] = []
    server = serve(tmp_path / "engine.sock", heads)
    try:
        engine = DockerEngine(f"unix://{tmp_path / 'engine.sock'}")
        assert engine.version() == "20.10.24"
        assert engine.version() == "20.10.24"  # asked again through the kept client
    finally:
        server.close()
    assert [head.split(" ")[1].rsplit("/", 1)[-1] for head in heads] == ["version", "version"], heads
    assert not [head for head in heads if "authorization:" in head.lower()], heads
