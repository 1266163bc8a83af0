"""Test support for RouteMesh: the local control plane, certificates and pytest fixtures.

Used by `tests/`, `e2e/`, the demo and developers. It is not shipped in any image, and product code
never imports it (an import-linter contract enforces it).
"""
