# Pinned versions of the local control plane, and where its binaries are cached.
# Sourced by hack/build-controlplane.sh; the Python harness reads the same values through
# `hack/versions.sh print` so there is one place to bump a version.
K8S_VERSION=v1.33.13
K8S_MAJOR=1
K8S_MINOR=33
ETCD_VERSION=v3.5.23
HELM_VERSION=v3.22.0
PHOENIX_VERSION=20.26.1

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

if [[ "${BASH_SOURCE[0]}" == "$0" && "${1:-}" == "print" ]]; then
  echo "$(routemesh_controlplane_dir)"
fi
