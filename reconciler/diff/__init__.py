"""Diff: desired vs remembered vs observed -> a plan of single actions with causes (pure)."""

from reconciler.diff.plan import Action, Inputs, Verb, account_exit, next_generation, plan_resource

__all__ = ["Action", "Inputs", "Verb", "account_exit", "next_generation", "plan_resource"]
