"""How a workload lives on: when an exited one is started again, and how a changed spec is proven or rolled back."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, model_validator

from reconciler.api.meta import Spec


class RestartPolicy(str, Enum):
    """When an exited process is started again: Always; OnFailure (after a known failure; an unknown exit code is
    not one); Never."""

    always = "Always"
    on_failure = "OnFailure"
    never = "Never"


class Backoff(Spec):
    """Exponential back-off between restarts: initialSeconds * 2^(n-1), capped at maxSeconds."""

    initial_seconds: float = Field(1.0, gt=0, le=3600, description="The wait before the first restart.")
    max_seconds: float = Field(300.0, gt=0, le=86400, description="The longest wait.")
    reset_after_seconds: float = Field(
        600.0, gt=0, description="A process that ran this long before exiting starts its back-off afresh."
    )

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> "Backoff":
        if self.max_seconds < self.initial_seconds:
            raise ValueError("maxSeconds must not be below initialSeconds")
        return self


class Restart(Spec):
    """Whether and when an exited process is started again; a failed start backs off the same way."""

    policy: RestartPolicy = RestartPolicy.always
    backoff: Backoff = Field(default_factory=Backoff)


class RollbackMode(str, Enum):
    auto = "Auto"
    manual = "Manual"


class UpdateStrategy(Spec):
    """How a changed spec is proven before it becomes the known-good version a rollback restores."""

    progress_deadline_seconds: float = Field(
        600.0, gt=0, le=86400, description="A new generation must become Ready within this many seconds.")
    soak_seconds: float = Field(
        30.0, ge=0, le=86400, description="...and then stay Ready this long to become the known-good version.")
    rollback: RollbackMode = Field(
        RollbackMode.manual,
        description="Auto: a failed update is replaced by the known-good version (and not retried until the spec "
                    "changes again). Manual: it stays failed; `reconciler rollback NAME` restores on demand.")
