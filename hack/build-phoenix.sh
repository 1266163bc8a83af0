#!/usr/bin/env bash
# Install the OTel trace backend (Arize Phoenix, pinned by hack/phoenix/requirements.txt) into its
# own virtualenv in a cache outside the work tree. The demo and the end-to-end trace tests start it.
#
# Called by .ci/run and `make otel-backend`; a complete cache is reused. It prints the `phoenix`
# executable's path on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.sh
source "$here/versions.sh"

log() { echo "build-phoenix: $*" >&2; }

out="$(routemesh_phoenix_dir)"
if [[ -f "$out/.complete" ]]; then
  log "cached: $out/bin/phoenix"
  echo "$out/bin/phoenix"
  exit 0
fi

start=$(date +%s)
# A venv's scripts name their interpreter by absolute path, so it is built where it stays, and
# only a marker written last makes it count as cached.
rm -rf "$out"
python3 -m venv "$out"
"$out/bin/python" -m pip install --quiet --no-deps -r "$here/phoenix/requirements.txt"
"$out/bin/python" -m pip check >&2
touch "$out/.complete"
log "installed Phoenix $PHOENIX_VERSION in $(( $(date +%s) - start )) s ($(du -sh "$out" | cut -f1))"
echo "$out/bin/phoenix"
