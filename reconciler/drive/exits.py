"""Prompt exit notification for any process, child or adopted, through Linux pidfds (no polling)."""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Callable


class ExitWatcher:
    """One thread waits on every watched pidfd and calls `on_exit(name, pid)` when a process ends."""

    def __init__(self, on_exit: Callable[[str, int], None]) -> None:
        self._on_exit = on_exit
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="exit-watcher", daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        try:
            descriptor = os.pidfd_open(pid)
        except ProcessLookupError:
            self._on_exit(name, pid)
            return
        with self._lock:
            self._selector.register(descriptor, selectors.EVENT_READ, (name, pid))
        os.write(self._wake_write, b"x")

    def unwatch(self, name: str) -> None:
        with self._lock:
            for descriptor, key in list(self._selector.get_map().items()):
                if key.data is not None and key.data[0] == name:
                    self._selector.unregister(descriptor)
                    os.close(descriptor)

    def _run(self) -> None:
        while True:
            ready = self._selector.select()
            for key, _ in ready:
                if key.data is None:
                    os.read(self._wake_read, 4096)
                    continue
                with self._lock:
                    if self._selector.get_map().get(key.fd) is not key:
                        continue  # unwatched meanwhile, its descriptor number perhaps reused by a new watch
                    self._selector.unregister(key.fd)
                    os.close(key.fd)
                self._on_exit(*key.data)
