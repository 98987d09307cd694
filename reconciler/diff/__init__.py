"""Diff: desired vs remembered vs observed -> a plan of single actions with causes (pure)."""

from reconciler.diff.plan import Action, Hold, Inputs, Verb, next_generation, note_observations, plan_resource

__all__ = ["Action", "Hold", "Inputs", "Verb", "next_generation", "note_observations", "plan_resource"]
