"""The optional embedding signal (issue 14, scope 1 b), with stub encoders.

It may only rescue a claim the default evaluator found unsupported for its words alone; it never
overrules a hard check and never flags a claim on its own.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.scoring import EmbeddingEvaluator, Evaluator, Verdict, build_evaluator
from gateway.scoring.embedding import EmbeddingModelError, model_files, onnx_encoder

CONTEXT = "Study rooms can be booked online up to a week in advance. The library is open Monday to Friday."
PARAPHRASE = "You can grab one through the portal up to a week early."
#: The stub's "meaning": words folded to a concept, as a sentence model would place them close.
CONCEPTS = {
    "grab": "book",
    "booked": "book",
    "portal": "online",
    "early": "advance",
    "study": "room",
    "rooms": "room",
    "one": "room",
}


DIMENSIONS = {"book": 0, "online": 1, "advance": 2, "week": 3, "room": 4}


def concept_encoder(calls: list[list[str]] | None = None) -> object:
    def encode(texts: Sequence[str]) -> list[list[float]]:
        if calls is not None:
            calls.append(list(texts))
        vectors = []
        for text in texts:
            vector = [0.0] * len(DIMENSIONS)
            for word in re.findall(r"[a-z]+", text.lower()):
                concept = CONCEPTS.get(word, word)
                if concept in DIMENSIONS:
                    vector[DIMENSIONS[concept]] += 1.0
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            vectors.append([x / norm for x in vector])
        return vectors

    return encode


def same_vector(texts: Sequence[str]) -> list[list[float]]:
    """An encoder that finds everything identical: the worst a model can do."""
    return [[1.0, 0.0] for _ in texts]


def test_a_paraphrase_that_fails_only_on_words_is_rescued() -> None:
    calls: list[list[str]] = []
    evaluator = EmbeddingEvaluator(concept_encoder(calls))  # type: ignore[arg-type]
    assert isinstance(evaluator, Evaluator) and evaluator.name == "embedding"
    judgement = evaluator.score(CONTEXT, "Can I get a study room?", PARAPHRASE)
    (claim,) = judgement.claims
    assert claim.verdict is Verdict.SUPPORTED and judgement.label == "grounded"
    assert claim.reasons == (
        "embedding similarity 0.95 >= 0.80 (content overlap 0.25 < 0.50 (not in context: grab, portal, early))",
    )
    # One batch: the doubtful claim, then the context's clauses.
    assert calls == [
        [
            PARAPHRASE,
            "Study rooms can be booked online up to a week in advance.",
            "The library is open Monday to Friday.",
        ]
    ]


def test_low_similarity_keeps_the_claim_unsupported_and_says_so() -> None:
    judgement = EmbeddingEvaluator(concept_encoder()).score(  # type: ignore[arg-type]
        CONTEXT, "", "Members also enjoy coffee in the lounge."
    )
    (claim,) = judgement.claims
    assert claim.verdict is Verdict.UNSUPPORTED
    assert claim.reasons[0].startswith("content overlap") and claim.reasons[-1] == "embedding similarity 0.00 < 0.80"


@pytest.mark.parametrize(
    "answer",
    [
        "Study rooms can be booked online up to 3 weeks in advance.",  # a number the context does not hold
        "The library is open Monday to Saturday.",  # a weekday it does not name
        "Study rooms can be booked online, and the library is open on Sundays.",
    ],
)
def test_embeddings_never_overrule_a_hard_check(answer: str) -> None:
    default = build_evaluator().score(CONTEXT, "", answer)
    judgement = EmbeddingEvaluator(same_vector).score(CONTEXT, "", answer)
    assert judgement.label == default.label == "hallucinated"
    assert [c.verdict for c in judgement.claims] == [c.verdict for c in default.claims]


def test_embeddings_never_flag_what_the_default_evaluator_passed_and_are_not_called_for_it() -> None:
    calls: list[list[str]] = []
    judgement = EmbeddingEvaluator(concept_encoder(calls)).score(  # type: ignore[arg-type]
        CONTEXT, "", "Study rooms can be booked online up to a week in advance."
    )
    assert judgement.score == 0.0 and calls == []


def test_a_bad_encoder_is_an_error_and_the_model_loads_lazily(tmp_path: Path) -> None:
    def short(texts: Sequence[str]) -> list[list[float]]:
        return [[1.0]]

    with pytest.raises(EmbeddingModelError, match="returned 1 vectors for 3 texts"):
        EmbeddingEvaluator(short).score(CONTEXT, "", PARAPHRASE)
    lazy = EmbeddingEvaluator(model_dir=tmp_path)  # nothing is read yet
    assert lazy.score(CONTEXT, "", "The library is open Monday to Friday.").score == 0.0  # no doubt: no model
    with pytest.raises(EmbeddingModelError, match=r"does not hold model\.onnx and tokenizer\.json"):
        lazy.score(CONTEXT, "", PARAPHRASE)


def test_model_files_from_a_directory_or_an_installed_package(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "tokenizer.json").write_text("{}")
    model, tokenizer = model_files(tmp_path)
    assert (model.name, tokenizer.name) == ("model.onnx", "tokenizer.json")
    with pytest.raises(EmbeddingModelError, match="'package:json' does not hold"):
        model_files("package:json")
    with pytest.raises(EmbeddingModelError, match="no installed package 'no_such_model_package'"):
        model_files("package:no_such_model_package")
    with pytest.raises(ValueError, match="needs a model"):
        build_evaluator("embedding")


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is not None, reason="the embedding extra is installed")
def test_without_the_extra_the_loader_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(EmbeddingModelError, match=r"needs the 'embedding' extra"):
        onnx_encoder(tmp_path)
