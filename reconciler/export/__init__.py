"""Exports of the desired state for other systems: Kubernetes manifests for a user who outgrows one host."""

from reconciler.export.kubernetes import EXPORT_NOTE, kubernetes_manifests, render_yaml

__all__ = ["EXPORT_NOTE", "kubernetes_manifests", "render_yaml"]
