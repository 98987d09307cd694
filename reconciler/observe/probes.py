"""Health probes: one HTTP request, TCP connect or command, bounded by the check's timeout."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.api.checks import HealthCheck


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str


def probe(
    check: HealthCheck, host: str, port: int | None, env: dict[str, str] | None = None, cwd: str | None = None,
    as_workload: Callable[[], None] | None = None,
) -> ProbeResult:
    """`port`: where an http/tcp check connects. `env`, `cwd` and `as_workload` (the preexec function that switches
    to its user) are the workload's: an exec check runs as the workload would, not as the reconciler."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    if check.http is not None:
        url = f"http://{f'[{target}]' if ':' in target else target}:{port}{check.http.path}"
        return _http(url, check.http.expect_status, check.timeout_seconds)
    if check.tcp is not None:
        try:
            with socket.create_connection((target, port), timeout=check.timeout_seconds):
                return ProbeResult(True, f"tcp {target}:{port} accepts connections")
        except OSError as error:
            return ProbeResult(False, f"tcp {target}:{port}: {error.strerror or error}")
    assert check.exec is not None
    try:
        done = subprocess.run(check.exec.command, capture_output=True, timeout=check.timeout_seconds, env=env, cwd=cwd,
                              preexec_fn=as_workload)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"{check.exec.command[0]}: no answer within {check.timeout_seconds}s")
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        return ProbeResult(False, f"{check.exec.command[0]}: {getattr(error, 'strerror', None) or error}")
    tail = (done.stdout + done.stderr).decode("utf-8", "replace").strip()[-200:]
    return ProbeResult(done.returncode == 0, f"{check.exec.command[0]} exited {done.returncode}" + (f": {tail}" if tail else ""))


def _http(url: str, expect: int, timeout: float) -> ProbeResult:
    import http.client  # with ssl and email: 6 ms that only a probing pass needs, not status or plan
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own loopback URL
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        return ProbeResult(False, f"GET {url}: {reason}")
    return ProbeResult(status == expect, f"GET {url}: {status}" + ("" if status == expect else f", expected {expect}"))
