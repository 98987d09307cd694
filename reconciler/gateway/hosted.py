"""The hosted route: a Model whose serving workload is placed at a provider, with consent, is sent there.

Per request, only what its workload's `fallback.context` allows may leave (classes_sent decides what a request
sends); the key is read from its reference at that moment and put in the Authorization header, never anywhere
else; and each request, sent or refused, is a line of the workload's evidence (spooled for the daemon to fold in):
time, model, provider, region, classes, bytes each way, status. Never content, never the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from reconciler.api.fallback import SecretRef
from reconciler.base.atomic import UnsafeFile
from reconciler.gateway.classes import UNCLASSIFIED, classes_sent, refused_classes
from reconciler.gateway.metrics import Exchange
from reconciler.gateway.relay import CODE, error, relay
from reconciler.gateway.routes import HostedRoute
from reconciler.gateway.spool import append_spooled
from reconciler.record.evidence import HOSTED_REQUEST

log = logging.getLogger("reconciler.gateway")

MAX_KEY_BYTES = 4096
CLIENT_GONE = 499  # the status recorded when the client left before its answer ended (nginx's convention)


class KeyUnavailable(Exception):
    """Why the key cannot be read; the message names its reference, never what the file holds."""


def read_key(reference: SecretRef) -> str:
    """The key its reference names, read now (a rotated key is used from the next request on)."""
    if reference.file is None:
        raise KeyUnavailable(f"apiKey is {reference.describe()}: the gateway is a process of its own and does not "
                             "hold the reconciler's environment; reference a file instead (apiKey.file, mode 0600)")
    try:
        fd = os.open(reference.file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError as problem:
        raise KeyUnavailable(f"apiKey file {reference.file}: {problem.strerror} for uid {os.geteuid()}, whom the gateway "
                             "runs as: make it readable by that uid") from None
    except OSError as problem:
        raise KeyUnavailable(f"apiKey file {reference.file}: {problem.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyUnavailable(f"apiKey file {reference.file} is not a regular file")
        held = file.read(MAX_KEY_BYTES + 1)
    key = held.strip()
    if not key or len(held) > MAX_KEY_BYTES or not all(33 <= byte < 127 for byte in key):
        raise KeyUnavailable(f"apiKey file {reference.file} does not hold one key (printable ASCII, no spaces, "
                             f"at most {MAX_KEY_BYTES} bytes); what it holds is not shown")
    return key.decode("ascii")


class HostedEvidence:
    """Spools hosted requests for the daemon to fold into their workloads' evidence (gateway/spool.py), off the
    event loop, in the order they ended. Each line has an id of its own: a fold done again adds none twice."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hosted-evidence")  # one: lines in order

    def record(self, route: HostedRoute, exchange: Exchange, path: str, status: int, outcome: str) -> None:
        line = {"id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(), "event": HOSTED_REQUEST,
                "resource": f"Workload/{route.workload}", "model": exchange.model, "provider": route.provider,
                "region": route.region, "providerModel": route.model, "path": path, "classes": list(exchange.classes),
                "bytesOut": exchange.bytes_out, "bytesIn": exchange.bytes_in, "status": status, "outcome": outcome}
        asyncio.get_running_loop().run_in_executor(self._writer, self._append, route.workload, line)

    def _append(self, workload: str, line: dict[str, Any]) -> None:
        try:
            append_spooled(self.directory, workload, line)
        except (UnsafeFile, OSError) as problem:
            log.error("a hosted request of Workload/%s is not in its evidence: %s", workload, problem)


async def forward_hosted(request: web.Request, session: aiohttp.ClientSession, evidence: HostedEvidence,
                         route: HostedRoute, tail: str, payload: dict[str, Any], exchange: Exchange) -> web.StreamResponse:
    """Send the request to the one provider the route names, or refuse it; either way it is evidence."""
    exchange.route, exchange.classes = f"hosted/{route.provider}", classes_sent(tail, payload)
    status, outcome = CLIENT_GONE, "ClientGone"
    try:
        response = await _hosted_answer(request, session, route, tail, payload, exchange)
        status = exchange.status or response.status
        outcome = response.get(CODE) or "Sent"
        return response
    finally:
        evidence.record(route, exchange, tail, status, outcome)


async def _hosted_answer(request: web.Request, session: aiohttp.ClientSession, route: HostedRoute, tail: str,
                         payload: dict[str, Any], exchange: Exchange) -> web.StreamResponse:
    about = f"model {exchange.model!r} is hosted at {route.provider} ({route.region}) for Workload/{route.workload}"
    refused = refused_classes(exchange.classes, list(route.context))
    if UNCLASSIFIED in refused:
        return error(403, f"{about}; the gateway cannot tell what POST /v1/{tail} would send, so it never sends it "
                     "to a hosted provider", "ContextNotAllowed", "permission_error")
    if refused:
        allowed = ", ".join(item.value for item in route.context)
        return error(403, f"{about}; this request would send {', '.join(refused)}, which its fallback.context does "
                     f"not allow (allowed: {allowed})", "ContextNotAllowed", "permission_error")
    try:
        key = read_key(route.api_key)
    except KeyUnavailable as problem:
        return error(503, f"{about}; {problem}", "SecretMissing", "model_unavailable")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    if "Accept" in request.headers:
        headers["Accept"] = request.headers["Accept"]
    body = json.dumps({**payload, "model": route.model}).encode()
    return await relay(request, session, f"{route.base_url}/{tail}", headers, body,
                       f"{route.provider} at {route.base_url}", exchange)
