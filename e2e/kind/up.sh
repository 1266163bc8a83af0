#!/usr/bin/env bash
# Create a kind cluster, build both images, load them into it, and install the chart.
#
# For users who have Docker (and kind, kubectl and helm). Never run by .ci/run: this project's
# CI machines have no Docker engine. Run from anywhere; smoke.sh then deploys the demo and tests
# it, down.sh deletes the cluster.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cluster="${ROUTEMESH_KIND_CLUSTER:-routemesh}"
tag="${ROUTEMESH_IMAGE_TAG:-dev}"

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "up.sh: $tool is not installed" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --wait 120s
fi
kubectl config use-context "kind-$cluster" >/dev/null

docker build -f "$repo/images/operator.Dockerfile" -t "routemesh/operator:$tag" "$repo"
docker build -f "$repo/images/sidecar.Dockerfile" -t "routemesh/sidecar:$tag" "$repo"
kind load docker-image --name "$cluster" "routemesh/operator:$tag" "routemesh/sidecar:$tag"

# The images are in the nodes already: never pull them.
helm upgrade --install routemesh "$repo/charts/routemesh" \
  --namespace routemesh-system --create-namespace \
  --set operator.image.repository=routemesh/operator --set operator.image.tag="$tag" \
  --set operator.image.pullPolicy=Never \
  --set sidecar.image.repository=routemesh/sidecar --set sidecar.image.tag="$tag" \
  --set sidecar.image.pullPolicy=Never \
  --wait --timeout 180s
kubectl -n routemesh-system rollout status deployment/routemesh-operator --timeout=120s
# The webhook answers once its caBundle is in place; pods created before would miss the sidecar.
for _ in $(seq 60); do
  bundle="$(kubectl get mutatingwebhookconfiguration routemesh-sidecar-injector \
    -o jsonpath='{.webhooks[0].clientConfig.caBundle}')"
  [[ -n "$bundle" ]] && break
  sleep 2
done
[[ -n "$bundle" ]] || { echo "up.sh: the operator never set the webhook's caBundle" >&2; exit 1; }
echo "up.sh: RouteMesh is installed in kind-$cluster; run e2e/kind/smoke.sh"
