"""Where people's answers are kept: one file per workload in the state directory (0700), never beside the specs,
so an edit to the desired-state folder (or a git pull into it) cannot approve anything. A request to roll a
workload back (`reconciler rollback`) is such an answer too, and the daemon watches this folder for them."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from reconciler.api.approval import Approval
from reconciler.base.atomic import write_atomic

log = logging.getLogger("reconciler")


class ApprovalStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "approvals"

    def get(self, name: str, hosted: bool = False) -> Approval | None:
        """`hosted`: the answer about sending it to its hosted fallback, which is asked and given on its own."""
        approval = _read(self._path(name, hosted), "approval")
        return approval if approval and approval.name == name and approval.hosted == hosted else None

    def put(self, approval: Approval) -> None:
        self._write(self._path(approval.name, approval.hosted), approval)

    def rollback_request(self, name: str) -> Approval | None:
        """A person asked to restore the known-good version instead of the spec with this hash."""
        request = _read(self._rollback_path(name), "rollback request")
        return request if request and request.name == name else None

    def request_rollback(self, request: Approval) -> None:
        self._write(self._rollback_path(request.name), request)

    def clear_rollback(self, name: str) -> None:
        """Acted on (it is in the resource's record now): a later return to the same spec is tried afresh."""
        self._rollback_path(name).unlink(missing_ok=True)

    def _rollback_path(self, name: str) -> Path:
        return self.directory / f"{name}.rollback.json"

    def _write(self, path: Path, answer: Approval) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, answer.model_dump_json(by_alias=True), mode=0o600)

    def _path(self, name: str, hosted: bool) -> Path:
        return self.directory / (f"{name}.hosted.json" if hosted else f"{name}.json")


def _read(path: Path, what: str) -> Approval | None:
    try:
        return Approval.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as error:  # written atomically: only a hand-edited file lands here
        log.warning("%s: ignored, not a readable %s: %s", path, what, error)
        return None
