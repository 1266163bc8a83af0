"""`routemesh`, the command line (also `kubectl routemesh`): what runs where, and why.

`main` parses the arguments and runs one command: `status` (policies, backends and the sidecars
given with `--sidecar`), `explain` (one request dry-run against a policy as compiled, without
calling a model) or `cost` (cost and tokens from the sidecars' metrics over a window). `cluster`
reads the API, `sidecars` reads the sidecars' admin endpoints, `explain` runs the sidecar's own
router, and `render` prints tables or JSON/YAML. It reads only; it never writes to the cluster.
"""
