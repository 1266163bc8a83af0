"""Sidecar injection: a pure function that builds the JSON patch for a Pod.

The admission handler calls it with the Pod and the injection settings. It performs no I/O, so
every case is tested on its own, and it is idempotent: an injected Pod comes back unchanged.
"""
