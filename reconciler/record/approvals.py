"""Where people's approvals are kept: one file per workload in the state directory (0700), never beside the specs,
so an edit to the desired-state folder (or a git pull into it) cannot approve anything."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from reconciler.api.approval import Approval
from reconciler.record.atomic import write_atomic

log = logging.getLogger("reconciler")


class ApprovalStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "approvals"

    def get(self, name: str, hosted: bool = False) -> Approval | None:
        """`hosted`: the answer about sending it to its hosted fallback, which is asked and given on its own."""
        path = self._path(name, hosted)
        try:
            approval = Approval.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as error:  # written atomically: only a hand-edited file lands here
            log.warning("%s: ignored, not a readable approval: %s", path, error)
            return None
        return approval if approval.name == name and approval.hosted == hosted else None

    def put(self, approval: Approval) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._path(approval.name, approval.hosted), approval.model_dump_json(by_alias=True), mode=0o600)

    def _path(self, name: str, hosted: bool) -> Path:
        return self.directory / (f"{name}.hosted.json" if hosted else f"{name}.json")
