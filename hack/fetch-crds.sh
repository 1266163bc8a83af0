#!/usr/bin/env bash
# Copy the third-party CRDs the chart's optional objects need (ServiceMonitor and PodMonitor from
# the Prometheus Operator, Certificate and Issuer from cert-manager) out of those projects'
# published Go modules, pinned in versions.sh, into a cache outside the work tree.
#
# Called by .ci/run and `make tools`; a complete cache is reused. The chart's dry-run test
# applies them so that the rendered objects are checked against their real schemas. It prints
# the directory on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.sh
source "$here/versions.sh"

log() { echo "fetch-crds: $*" >&2; }

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

out="$(routemesh_crds_dir)"
if [[ -f "$out/.complete" ]]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
module_dir() {  # the extracted module's directory, downloaded through the module proxy
  (cd "$scratch" && go mod download -json "$1@$2") \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'
}

start=$(date +%s)
rm -rf "$out.partial"
mkdir -p "$out.partial"
prometheus="$(module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")"
for kind in servicemonitors podmonitors; do
  cp "$prometheus/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out.partial/"
done
certmanager="$(module_dir github.com/cert-manager/cert-manager "$CERT_MANAGER_VERSION")"
for kind in certificates issuers; do
  cp "$certmanager/deploy/crds/cert-manager.io_$kind.yaml" "$out.partial/"
done
chmod -R u+w "$out.partial"
touch "$out.partial/.complete"
rm -rf "$out"
mv "$out.partial" "$out"
log "fetched in $(( $(date +%s) - start )) s"
echo "$out"
