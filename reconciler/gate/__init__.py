"""Gate: the policy decision for each planned action (pure)."""

from reconciler.gate.verdict import Decision, Reason, Verdict, decide

__all__ = ["Decision", "Reason", "Verdict", "decide"]
