"""Typed public API: the kinds users write and the status the reconciler reports."""

from reconciler.api.kinds import KINDS, AnyResource, Model, Policy, Workload, spec_hash
from reconciler.api.meta import API_VERSION, GROUP, VERSION, Resource, ResourceKey

__all__ = [
    "API_VERSION", "GROUP", "KINDS", "VERSION", "AnyResource", "Model", "Policy",
    "Resource", "ResourceKey", "Workload", "spec_hash",
]
