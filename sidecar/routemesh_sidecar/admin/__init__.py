"""The admin listener, on its own port: liveness, readiness, config dump and metrics.

Kubernetes probes and operators read it; the app never does. It reports state; it never changes
routing.
"""
