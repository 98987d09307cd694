"""One owner's containers as the engine showed them, so a pass asks the engine once, not once per look.

Each `names()` (once per pass: the reconciler's key list) takes one listing, without inspections. A workload's
containers are then inspected once and that inspection is reused, but only while the engine's event stream is
subscribed (`subscribed()`) and tells of nothing about that workload since (`changed()`): any create, start,
die or destroy of a container carrying the owner's label arrives there. An inspection is also dropped when the
next listing shows its container in another state, and everything is dropped when the stream is lost. Without a
subscription (an engine that went away) every look asks the engine afresh. A start's own inspection, taken
after it, is kept as the workload's (`acted`), and the events that start caused (`expect`) are not news then: in
a cold `apply` of 20 containers they made every later look at each of them ask again. A one-shot reader (`status`, `plan`,
`describe`: nothing acts, nothing subscribes) keeps what it saw first: one listing and one inspection each.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from reconciler.observe.docker_engine import DockerEngine

if TYPE_CHECKING:
    from docker.models.containers import Container


def container_name(owner: str, workload: str) -> str:
    """The name a workload's container has once no replacement of it is under way."""
    return f"lais-{workload}-{owner[:8]}"


class OwnedContainers:
    def __init__(self, engine: DockerEngine, owner: str, one_shot: bool = False) -> None:
        self.engine = engine
        self.owner = owner
        self._lock = threading.Lock()
        self._reusable = one_shot  # subscribed, or a one-shot reader (it reports one moment): what was seen is reused
        self._listing: dict[str, list[tuple[str, str]]] | None = None  # workload -> (id, state) of its containers
        self._inspected: dict[str, Container] = {}  # id -> inspection, reused while nothing was said about it
        self._changed: set[str] = set()  # workloads an event or an act touched since the listing
        self._epoch = 0  # counts events and acts: a look that overlapped one is not kept
        self._touched: dict[str, int] = {}  # per workload, counts what made its next look a fresh one
        self._subscriptions = 0  # counts subscriptions made and lost: what was seen across one is not kept
        self._expected: set[tuple[str, str]] = set()  # (container id, event) of our own acts, already seen
        self._untidy: list[str] = []  # workloads the latest listing showed a replacement's leftovers of

    def names(self) -> list[str]:
        """The workloads this owner has containers for, from a new listing (raises EngineUnavailable, APIError)."""
        with self._lock:
            epoch = self._epoch
        listed = self.engine.listed(self.owner)
        listing: dict[str, list[tuple[str, str]]] = {}
        untidy = set()
        for container in listed:
            listing.setdefault(container.workload, []).append((container.id, container.state))
            if container.name != container_name(self.owner, container.workload):
                untidy.add(container.workload)
        with self._lock:
            self._untidy = sorted(untidy | {name for name, found in listing.items() if len(found) > 1})
            if self._reusable and epoch == self._epoch:
                states = {container.id: container.state for container in listed}
                self._inspected = {id_: inspected for id_, inspected in self._inspected.items()
                                   if states.get(id_) == inspected.status}
                self._listing, self._changed = listing, set()
        return sorted(listing)

    def untidy(self) -> list[str]:
        """The workloads the latest listing showed more than one container of, or one not under the workload's name:
        what a replacement cut short, or one whose old container's removal failed, left."""
        with self._lock:
            return list(self._untidy)

    def seen_names(self) -> list[str]:
        """The workloads this owner has containers for, as the pass's listing showed them and every event or act
        since added; a new listing when there is none to reuse (what each start's memory judgement reads)."""
        with self._lock:
            if self._reusable and self._listing is not None:
                return sorted({*(name for name, found in self._listing.items() if found), *self._changed})
        return self.names()

    def of(self, name: str) -> list[Container]:
        """Every container of the workload, inspected: reused when nothing can have changed, else asked afresh."""
        with self._lock:
            unlisted = self._reusable and self._listing is None
        if unlisted:  # subscribed since the last listing: one listing now serves this look and the pass's next ones
            self.names()
        with self._lock:
            epoch = self._epoch
            known = None
            if self._reusable and self._listing is not None and name not in self._changed:
                known = [(id_, self._inspected.get(id_)) for id_, _ in self._listing.get(name, [])]
        if known is not None:
            containers = [inspected or self.engine.inspect(id_) for id_, inspected in known]
            if all(container is not None for container in containers):
                self._keep(epoch, name, containers)  # type: ignore[arg-type]
                return containers  # type: ignore[return-value]
        containers = self.engine.owned(self.owner, name)  # one vanished since the listing, or no listing to trust
        self._keep(epoch, name, containers)
        return containers

    def _keep(self, epoch: int, name: str, containers: list[Container]) -> None:
        with self._lock:
            if not self._reusable or self._listing is None or epoch != self._epoch:
                return
            self._listing[name] = [(container.id, container.status) for container in containers]
            self._inspected.update({container.id: container for container in containers})
            self._changed.discard(name)

    def expect(self, container_id: str, *events: str, name: str = "") -> tuple[int, int]:
        """Our own act causes (or caused: its answer may come after the event) these events of the container: the
        inspection taken after it (`acted`) has seen them, so when they arrive they change nothing; any other event
        still does. Returns the mark `acted` takes: an event about `name` that was not expected, after this, wins."""
        with self._lock:
            self._expected.update((container_id, event) for event in events)
            return self._subscriptions, self._touched.get(name, 0)

    @contextlib.contextmanager
    def expecting(self, container_id: str, *events: str) -> Iterator[None]:
        """`expect` around the act that causes the events. An act that fails may leave the container running: its
        later exit of its own is news, so the expectation goes with the failure."""
        self.expect(container_id, *events)
        try:
            yield
        except BaseException:
            self.unexpect(container_id)
            raise

    def unexpect(self, container_id: str) -> None:
        """No event of the container is ours any more."""
        with self._lock:
            self._expected = {pair for pair in self._expected if pair[0] != container_id}

    def mark(self, name: str) -> tuple[int, int]:
        """As `expect` returns: taken before an act whose events are all expected before they can happen."""
        return self.expect("", name=name)

    def acted(self, name: str, containers: list[Container], mark: tuple[int, int]) -> None:
        """`containers`, inspected after our own act, are all the workload has (as a start leaves it: it removed
        the others first; none, after a stop that removed them); kept for the looks that follow unless an event or a lost stream came after `mark`."""
        with self._lock:
            self._epoch += 1  # a listing that overlapped the act is not kept
            if not self._reusable or self._listing is None or (self._subscriptions, self._touched.get(name, 0)) != mark:
                self._changed.add(name)
                return
            self._listing[name] = [(container.id, container.status) for container in containers]
            self._inspected.update({container.id: container for container in containers})
            self._changed.discard(name)

    def event(self, name: str, container_id: str, action: str) -> bool:
        """The engine says `action` happened to a container of `name`: news (True), unless our own act caused it."""
        with self._lock:
            expected = (container_id, action) in self._expected
            self._expected.discard((container_id, action))
        if action == "destroy":  # no later event of it will come (a stop expects a die that may not)
            self.unexpect(container_id)
        if not expected:
            self.changed(name)
        return not expected

    def changed(self, name: str) -> None:
        """An event or an act about `name`: its next look asks the engine."""
        with self._lock:
            self._epoch += 1
            self._touched[name] = self._touched.get(name, 0) + 1
            self._changed.add(name)
            for id_, _ in (self._listing or {}).get(name, []):
                self._inspected.pop(id_, None)

    def subscribed(self, live: bool) -> None:
        """The event stream was just subscribed (True) or lost (False): what was seen before is not reused."""
        with self._lock:
            self._epoch += 1
            self._reusable = live
            self._listing, self._inspected, self._changed, self._expected = None, {}, set(), set()
            self._subscriptions += 1
