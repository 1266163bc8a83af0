#!/usr/bin/env bash
# Build the helm CLI from its published Go module into a cache outside the work tree, keyed by
# the helm and Go versions. The chart tests render the chart with it.
#
# Called by .ci/run and `make tools`; a complete cache is reused. It never downloads a prebuilt
# binary. It prints the helm binary's path on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.sh
source "$here/versions.sh"

log() { echo "build-helm: $*" >&2; }

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

out="$(routemesh_helm_dir)"
if [[ -x "$out/helm" ]]; then
  log "cached: $out/helm"
  echo "$out/helm"
  exit 0
fi

start=$(date +%s)
mkdir -p "$out.partial"
(
  cd "$here/helm"
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    -o "$out.partial/helm" helm.sh/helm/v3/cmd/helm
)
"$out.partial/helm" version --short >&2
rm -rf "$out"
mv "$out.partial" "$out"
log "built in $(( $(date +%s) - start )) s"
echo "$out/helm"
