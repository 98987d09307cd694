"""An HTTP session that remembers why a source did not answer."""

from __future__ import annotations

import requests

from reconciler.drive.artifacts import request_error


class WatchedSession(requests.Session):
    """Remembers why the source did not answer (a connection error, an HTTP error), which the header reader folds
    into 'unreadable', so that it is not taken for a file that is not GGUF."""

    def __init__(self, inner: requests.Session) -> None:
        super().__init__()
        self.inner, self.failure = inner, None

    def request(self, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
        try:
            response = self.inner.request(*args, **kwargs)  # type: ignore[arg-type]
        except requests.RequestException as error:
            self.failure = request_error(error)
            raise
        if response.status_code not in (200, 206, 416):
            self.failure = f"HTTP {response.status_code} {response.reason}"
        return response

    def close(self) -> None:
        self.inner.close()
        super().close()
