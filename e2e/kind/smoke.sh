#!/usr/bin/env bash
# Deploy the demo (demo.yaml) into the kind cluster up.sh made, and check the whole path: the
# policy is programmed, the app's pod got its sidecar, a request through it reaches the cheap
# provider, and with that provider scaled to zero the next one falls back to the strong one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ns=routemesh-demo
fail() { echo "smoke.sh: FAIL: $*" >&2; exit 1; }

kubectl apply -f "$here/demo.yaml"
kubectl -n "$ns" wait --for=condition=Programmed routingpolicy/chat --timeout=120s
kubectl -n "$ns" rollout status deployment/economy deployment/frontier --timeout=180s
kubectl -n "$ns" rollout status deployment/chat --timeout=180s

pod="$(kubectl -n "$ns" get pod -l app=chat -o jsonpath='{.items[0].metadata.name}')"
containers="$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.initContainers[*].name}')"
[[ " $containers " == *" routemesh-sidecar "* ]] || fail "pod $pod has no sidecar ($containers)"

ask() {  # one chat completion through the sidecar, from inside the app container
  kubectl -n "$ns" exec "$pod" -c app -- curl -sS -D - -o /dev/stdout \
    -H 'content-type: application/json' \
    -d '{"model": "small", "messages": [{"role": "user", "content": "hi"}]}' \
    http://127.0.0.1:4000/v1/chat/completions
}

answer="$(ask)"
echo "$answer"
grep -qi '^x-routemesh-backend: economy' <<<"$answer" || fail "not answered by economy"
grep -q 'hello from economy' <<<"$answer" || fail "economy's answer is missing"

kubectl -n "$ns" scale deployment/economy --replicas=0
kubectl -n "$ns" wait --for=delete pod -l app=economy --timeout=60s
answer="$(ask)"
echo "$answer"
grep -qi '^x-routemesh-backend: frontier' <<<"$answer" || fail "no fallback to frontier"
grep -q 'hello from frontier' <<<"$answer" || fail "frontier's answer is missing"
kubectl -n "$ns" scale deployment/economy --replicas=1

kubectl get rp,mb -n "$ns"
echo "smoke.sh: PASS"
