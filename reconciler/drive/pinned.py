"""HTTP sessions whose connections go only where a judge allowed: each connection (a redirect's too) resolves its
host once, asks the judge about the addresses found, and connects to those addresses, not to a second answer from
DNS. TLS still verifies the certificate against the host's name."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from reconciler.drive.artifacts import SourceRefused

# host, port, the addresses it resolved to -> why not (None: allowed)
Judge = Callable[[str, int, list[str]], "str | None"]


def pinned_session(judge: Judge) -> requests.Session:
    """A session for fetching from untrusted URLs. Proxies from the environment are ignored: a proxy would resolve
    the host itself, out of the judge's sight."""
    session = requests.Session()
    session.trust_env = False
    adapter = _PinnedAdapter(judge)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _pinned(base: type[HTTPConnection], judge: Judge) -> type[HTTPConnection]:
    class Pinned(base):  # type: ignore[valid-type, misc]
        def _new_conn(self) -> socket.socket:
            host = self._dns_host
            try:
                found = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)
            except socket.gaierror:
                return super()._new_conn()  # the library's own error for a name that does not resolve
            addresses = list(dict.fromkeys(str(entry[4][0]) for entry in found))
            refusal = judge(host, self.port, addresses)
            if refusal is not None:
                raise SourceRefused(refusal)
            error: OSError | None = None
            for address in addresses:  # as create_connection would, but only to the addresses judged
                self._dns_host = address
                try:
                    return super()._new_conn()
                except OSError as failed:
                    error = failed
                finally:
                    self._dns_host = host
            assert error is not None
            raise error

    return Pinned


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, judge: Judge, **options: Any) -> None:
        self._judge = judge
        super().__init__(**options)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        judge = self._judge
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedPool", (HTTPConnectionPool,), {"ConnectionCls": _pinned(HTTPConnection, judge)}),
            "https": type("PinnedTlsPool", (HTTPSConnectionPool,), {"ConnectionCls": _pinned(HTTPSConnection, judge)}),
        }
