#!/usr/bin/env bash
# Delete the kind cluster up.sh created (and everything in it).
set -euo pipefail
kind delete cluster --name "${ROUTEMESH_KIND_CLUSTER:-routemesh}"
