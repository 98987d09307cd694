"""The exceptions of the Docker SDK and of requests, for `except` clauses in modules that must not import them.

The SDK brings requests, urllib3 and http.cookiejar: ~50 ms of every command's start, for commands that never
talk to a container engine or a model source. An `except docker_errors.APIError` clause names its class only when
something is raised through it; if the library was never imported, none of its exceptions can be in flight, and
the clause gets a class that nothing raises instead of importing the library to match against it."""

from __future__ import annotations

import sys


class _NeverRaised(Exception):
    """Stands for an exception class of a library not imported: nothing can have raised one."""


class _ExceptionsOf:
    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> type[BaseException]:
        module = sys.modules.get(self._module)
        found: type[BaseException] = _NeverRaised if module is None else getattr(module, name)
        return found


docker_errors = _ExceptionsOf("docker.errors")
request_errors = _ExceptionsOf("requests.exceptions")
