"""The routes file in the state directory: written whole and atomically by the reconciler, re-read by the gateway
when its identity (inode, size, mtime) changes. A stat per request is cheap and never serves a stale route."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import ValidationError

from reconciler.base.atomic import already_holds, write_atomic
from reconciler.gateway.routes import RouteTable

log = logging.getLogger("reconciler.gateway")

ROUTES_FILE = "gateway/routes.json"  # under the state directory


def routes_path(state_dir: Path) -> Path:
    return state_dir / ROUTES_FILE


def write_routes(path: Path, table: RouteTable) -> None:
    path.parent.mkdir(mode=0o711, exist_ok=True)  # the gateway, running as a user of its own, reads the file
    path.parent.chmod(0o711)
    text = table.model_dump_json(by_alias=True, indent=1) + "\n"
    if not already_holds(path, text, root=path.parent.parent):  # replaced, the gateway would read it again for nothing
        write_atomic(path, text, root=path.parent.parent)


class RoutesFile:
    """The routes as last read; `current()` re-reads the file when it was replaced, and keeps the last good table
    (with the problem logged) when the new one cannot be read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self.table = RouteTable()
        self.problem: str | None = f"{path}: not read yet"

    def current(self) -> RouteTable:
        try:
            facts = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self.table, self.problem = None, RouteTable(), f"{self.path}: not written yet"
            return self.table
        except OSError as error:  # a folder above it this user may not pass: the routes' problem, not the request's
            self._seen = None
            self._unreadable(error)
            return self.table
        identity = (facts.st_ino, facts.st_size, facts.st_mtime_ns)
        if identity != self._seen:
            self._seen = identity
            try:
                self.table, self.problem = RouteTable.model_validate_json(self.path.read_bytes()), None
            except (OSError, ValidationError) as error:
                self._unreadable(error)
        return self.table

    def _unreadable(self, error: Exception) -> None:
        problem = f"{self.path}: unreadable, serving the routes read before: {error}"
        if problem != self.problem:  # once, not on every request
            log.error("%s", problem)
        self.problem = problem
