#!/usr/bin/env bash
# Build the local control plane's binaries (kube-apiserver, kube-controller-manager, etcd) from
# published Go modules, into a cache outside the work tree keyed by every version that matters.
#
# Called by .ci/run and `make controlplane`; safe to call again: a complete cache is reused.
# It never downloads prebuilt binaries. If the etcd build fails it falls back to Debian's
# etcd-server. It prints the directory of the binaries on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.sh
source "$here/versions.sh"

log() { echo "build-controlplane: $*" >&2; }

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

out="$(routemesh_controlplane_dir)"
if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/etcd" ]]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi

mkdir -p "$out.partial"
free_mb=$(df -Pm "$out.partial" | awk 'NR==2 {print $4}')
if [[ "$free_mb" -lt 4000 ]]; then
  log "only ${free_mb} MB free under $out; the build needs about 4 GB (module and build caches)"
  exit 1
fi

start=$(date +%s)
log "go $(go env GOVERSION), kubernetes $K8S_VERSION, etcd $ETCD_VERSION -> $out"

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  # Without these the server reports v0.0.0-master, which confuses kubectl's version dispatcher.
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$K8S_MAJOR -X $pkg.gitMinor=$K8S_MINOR"
  ldflags+=" -X $pkg.gitTreeState=clean"
done

(
  cd "$here/controlplane"
  for cmd in kube-apiserver kube-controller-manager; do
    t0=$(date +%s)
    go build -trimpath -ldflags "$ldflags" -o "$out.partial/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    log "$cmd built in $(( $(date +%s) - t0 )) s"
  done
)

build_etcd() {
  cd "$here/etcd"
  local t0
  t0=$(date +%s)
  go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" go.etcd.io/etcd/server/v3 &&
    log "etcd built in $(( $(date +%s) - t0 )) s"
}

if ! (build_etcd); then
  log "etcd build failed; falling back to Debian's etcd-server"
  if ! command -v /usr/bin/etcd >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
    # The package starts a system etcd on the default ports; ours uses its own ports and data dir.
    (systemctl stop etcd || service etcd stop || true) >/dev/null 2>&1
  fi
  ln -sf /usr/bin/etcd "$out.partial/etcd"
fi

"$out.partial/kube-apiserver" --version >&2
"$out.partial/etcd" --version | head -1 >&2
rm -rf "$out"
mv "$out.partial" "$out"
log "cold build took $(( $(date +%s) - start )) s"
echo "$out"
