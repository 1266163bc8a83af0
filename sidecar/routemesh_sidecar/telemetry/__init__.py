"""Telemetry: one route span per routing decision, one child span per attempt, and metrics.

Attempt spans follow the OpenTelemetry GenAI conventions (`gen_ai.*`); the route span carries
RouteMesh's own `routemesh.*` attributes. Prompt and response content is recorded only when a
setting opts in. It reads results; it never influences a routing decision.
"""
