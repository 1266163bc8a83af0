"""Train the learned router offline and write the sidecar's model file.

Cross-validates the model on the public prompts (10 folds: each prompt scored by a model that
did not see it, at a temperature fitted without it), fits the final temperature on those
held-out predictions, calibrates the strong-share thresholds on the out-of-fold scores of
MT-Bench's first turns, then fits on every prompt and writes the weights as JSON, which the
sidecar loads without numpy (`routemesh_sidecar.routing.learned`). Deterministic: the same data
gives the same file. Needs the `bench-data` packages (MT-Bench, HumanEval) and numpy; no network.

Run by `make router`; the file is checked in, so this runs only when the model changes. Prints
the cross-validated figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from routemesh_testing.router_training import train

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "sidecar" / "routemesh_sidecar" / "routing" / "models" / "learned-router.json"


def main() -> int:
    """Train, write the model file, and print the cross-validated figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the model file")
    args = parser.parse_args()
    started = time.perf_counter()
    document = train()
    text = json.dumps(document, separators=(",", ":"), sort_keys=True) + "\n"
    args.out.write_text(text, encoding="utf-8")
    figures = document["cross_validation"]
    print(
        f"trained in {time.perf_counter() - started:.1f} s, {len(document['weights'])} features, "
        f"{len(text) / 1024:.0f} KiB: cross-validated accuracy {figures['accuracy']}, "
        f"AUC on MT-Bench (strong categories {figures['strong_categories']}) "
        f"{figures['auc_mt_bench']}, temperature {document['temperature']} "
        f"(the folds': {figures['temperatures']})",
        file=sys.stderr,
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
