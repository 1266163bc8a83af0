"""Pydantic models of RoutingPolicy and ModelBackend, `routemesh.dev/v1alpha1`.

The CRD YAML in `crds/` is generated from these models and checked in; `make verify` fails on
drift. Models describe and validate; they do no I/O.
"""
