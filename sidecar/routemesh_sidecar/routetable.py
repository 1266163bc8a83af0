"""The route table: the wire format between the operator and the sidecar.

The sidecar owns this model and the operator imports it (never the other way). A route table is
an immutable, versioned snapshot (a counter plus a content hash) that refers back to the
resources that produced it. The models are defined with the API and the data plane.
"""
