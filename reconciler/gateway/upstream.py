"""Choosing a backend (least outstanding requests) and the client session that talks to the engines."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from reconciler.gateway.routes import Backend

# Only what an engine needs to read the request: a client's cookies or keys are not the local engine's business.
# The body was parsed as JSON to find its model, so it is sent as JSON whatever the client labelled it.
FORWARDED_HEADERS = ("Accept",)
# Connecting to a loopback engine is instant or refused; a generation may take as long as it takes.
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5)
MAX_CONNECTIONS = 512


class Balancer:
    """Outstanding requests per backend URL, in this gateway process; a new request goes to the least busy."""

    def __init__(self) -> None:
        self.outstanding: Counter[str] = Counter()

    def pick(self, backends: tuple[Backend, ...]) -> Backend:
        return min(backends, key=lambda backend: (self.outstanding[backend.url], backend.workload))

    @contextmanager
    def holding(self, backend: Backend) -> Iterator[None]:
        self.outstanding[backend.url] += 1
        try:
            yield
        finally:
            self.outstanding[backend.url] -= 1
            if not self.outstanding[backend.url]:
                del self.outstanding[backend.url]


def client_session() -> aiohttp.ClientSession:
    """No cookie jar: the session serves every client, and what one answer sets (a provider's session cookie) is no
    other client's to send."""
    return aiohttp.ClientSession(timeout=UPSTREAM_TIMEOUT, connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                                 cookie_jar=aiohttp.DummyCookieJar())
