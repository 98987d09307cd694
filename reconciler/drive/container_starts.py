"""What the container driver keeps of each workload's last start, in the state directory: the container's id and
main pid (the engine forgets the pid once it exits, and a container started and never removed that is missing was
removed behind the reconciler's back), and when the reconciler asked it to stop (the engine records an exit, never
who asked for it)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.base.atomic import write_atomic
from reconciler.observe import clock

if TYPE_CHECKING:
    from docker.models.containers import Container


class ContainerStarts:
    def __init__(self, folder: Path, readonly: bool) -> None:
        self._folder = folder
        self._readonly = readonly

    def remember(self, name: str, container: Container | None) -> None:
        """The container a start made (None: one is about to be made), so it is never lost sight of."""
        pid = (container.attrs.get("State") or {}).get("Pid") or 0 if container else 0
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {"id": container.id if container else None, "pid": pid}
        write_atomic(self._folder / f"{name}.json", json.dumps(record), mode=0o600)

    def note_stop_requested(self, name: str, container_id: str, withdrawn: bool = False) -> None:
        """Before the stop call, kept across a crash: the engine records an exit, never who asked for it.
        `withdrawn`: the stop call failed, the request is taken back."""
        started = self.last(name)
        if started.get("id") == container_id:
            started.pop("stopAt", None)
            # on the engine's clock, to compare with its FinishedAt as it is
            asked = {} if withdrawn else {"stopAt": clock.system_now().isoformat()}
            write_atomic(self._folder / f"{name}.json", json.dumps({**started, **asked}), mode=0o600)

    def stopped_by_us(self, name: str, container_id: str, finished: datetime | None) -> bool:
        """An exit after the reconciler asked for it (an idle or unhealthy stop), not a crash before the ask; both
        times the system clock's: converted as they are read, an exit a few ms after its stop could seem before it."""
        started = self.last(name)
        asked = started.get("stopAt") if started.get("id") == container_id else None
        try:
            return isinstance(asked, str) and finished is not None and finished >= datetime.fromisoformat(asked)
        except (TypeError, ValueError):  # a damaged record proves nothing: the exit stays one it did not cause
            return False

    def forget(self, name: str) -> None:
        if not self._readonly:
            (self._folder / f"{name}.json").unlink(missing_ok=True)

    def last(self, name: str) -> dict:
        try:
            return json.loads((self._folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}

    def pid(self, name: str, container_id: str) -> int:
        started = self.last(name)
        return started.get("pid", 0) if started.get("id") == container_id else 0
