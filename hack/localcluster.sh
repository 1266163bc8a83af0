#!/usr/bin/env bash
# Start, stop or inspect the local control plane by hand:
#   hack/localcluster.sh up [--crd FILE]...   # prints the KUBECONFIG line to export
#   hack/localcluster.sh status
#   hack/localcluster.sh down
# Builds the binaries first if they are not cached, and the project venv if it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
make --no-print-directory install >/dev/null
if [[ "${1:-}" == "up" ]]; then
  bash hack/build-controlplane.sh >/dev/null
fi
PYTHONPATH=testing exec .venv/bin/python -m routemesh_testing "$@"
