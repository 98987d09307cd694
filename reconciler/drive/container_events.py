"""The engine's event stream for one owner's containers: exits and removals wake their workloads, the engine coming
back wakes them all, and every event about a container of ours makes the next look at its workload a fresh one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from reconciler.observe.container_listing import OwnedContainers
from reconciler.observe.docker_engine import OWNER_LABEL, WORKLOAD_LABEL, DockerEngine

log = logging.getLogger("reconciler")


class ContainerEvents:
    def __init__(self, engine: DockerEngine, owner: str, seen: OwnedContainers, on_exit: Callable[[str], None],
                 on_engine_back: Callable[[], None] | None) -> None:
        self.engine = engine
        self._owner = owner
        self._seen = seen
        self._on_exit = on_exit
        self._on_engine_back = on_engine_back
        self._first_subscription = threading.Event()  # the watcher's first try ended, subscribed or not

    def start(self) -> None:
        threading.Thread(target=self._watch, name="container-events", daemon=True).start()
        # subscribed before the first look, as an informer lists after it watches: no exit falls between them,
        # and the pass that follows can reuse what its listing showed
        self._first_subscription.wait(self.engine.timeout)

    def _watch(self) -> None:
        lost = False
        while True:
            try:
                with self.engine.reach() as client:
                    events = client.events(decode=True, filters={
                        "type": "container", "label": [f"{OWNER_LABEL}={self._owner}"],
                        "event": ["create", "start", "die", "destroy"],
                    })
                    self._seen.subscribed(True)
                    self._first_subscription.set()
                    if lost:
                        log.info("%s answers again", self.engine.address)
                        if self._on_engine_back:
                            self._on_engine_back()
                    lost = False
                    for event in events:
                        actor, action = event.get("Actor") or {}, event.get("Action", "")
                        name = actor.get("Attributes", {}).get(WORKLOAD_LABEL)
                        news = bool(name) and self._seen.event(name, actor.get("ID", ""), action)
                        if news and action in ("die", "destroy"):
                            self._on_exit(name)
            except Exception as error:  # noqa: BLE001 - the engine went away: wait for it, never die
                if not lost:
                    log.warning("container events: %s", error)
                lost = True
            self._seen.subscribed(False)  # the stream ended or broke: nothing seen is reused until it is back
            self._first_subscription.set()
            time.sleep(2.0)
