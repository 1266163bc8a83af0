# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are read by the scripts that source this file
# Pinned versions of the local control plane, and where its binaries are cached.
# Sourced by hack/build-controlplane.sh; the Python harness reads the same values through
# `hack/versions.sh print` so there is one place to bump a version.
K8S_VERSION=v1.33.13
K8S_MAJOR=1
K8S_MINOR=33
ETCD_VERSION=v3.5.23
HELM_VERSION=v3.22.0
PHOENIX_VERSION=20.26.1
# Third-party CRDs the chart's optional objects need (its dry-run test applies them), read from
# these projects' Go modules.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
CERT_MANAGER_VERSION=v1.21.2

routemesh_controlplane_dir() {
  local cache="${ROUTEMESH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/routemesh}"
  local gov
  gov="$(GOTOOLCHAIN=local go env GOVERSION)"
  echo "$cache/controlplane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-$gov"
}

routemesh_helm_dir() {
  local cache="${ROUTEMESH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/routemesh}"
  local gov
  gov="$(GOTOOLCHAIN=local go env GOVERSION)"
  echo "$cache/tools/helm-$HELM_VERSION-$gov"
}

# Keyed by the lock file's hash too, so a changed pin is a new virtualenv rather than a stale one.
routemesh_phoenix_dir() {
  local cache="${ROUTEMESH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/routemesh}"
  local here lock
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  lock="$(sha256sum "$here/phoenix/requirements.txt" | cut -c1-12)"
  echo "$cache/tools/phoenix-$PHOENIX_VERSION-$lock"
}

routemesh_crds_dir() {
  local cache="${ROUTEMESH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/routemesh}"
  echo "$cache/tools/crds-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION-cert-manager-$CERT_MANAGER_VERSION"
}

if [[ "${BASH_SOURCE[0]}" == "$0" && "${1:-}" == "print" ]]; then
  routemesh_controlplane_dir
fi
