"""RouteMesh operator: the control plane.

It reconciles RoutingPolicy and ModelBackend resources (`routemesh.dev/v1alpha1`) into route
tables, distributes them to the sidecars, runs self-hosted vLLM backends and injects the sidecar
through a mutating webhook. Only `routemesh_operator.handlers` imports kopf.
"""

__version__ = "0.2.0.dev0"
