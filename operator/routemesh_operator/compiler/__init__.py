"""The compiler: a pure function from resources to route tables.

It takes RoutingPolicies, ModelBackends and what they reference, and returns immutable route
tables plus the status each resource should report. It performs no I/O and imports neither kopf
nor a Kubernetes client (an import-linter contract enforces it), so it is tested without a cluster.
"""
