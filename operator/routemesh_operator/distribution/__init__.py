"""Distribution: serves versioned route tables to sidecars and collects their ACKs and NACKs.

Envoy-style: sidecars watch for new versions, and the operator authenticates each one by its
ServiceAccount token. It serves what the compiler produced; it never compiles.
"""
