"""The local NLI model hook (issue 14, scope 1 d), with stub models written by the tests."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from gateway.scoring import Evaluator, Verdict, build_evaluator
from gateway.scoring.nli import NliEvaluator, NliModelError, premise_windows

# A stub "model": entailment is 1.0 when every word of the hypothesis occurs in the premise, else
# 0.1. It records its calls and its loads in files of the model directory, so laziness shows.
STUB_ADAPTER = textwrap.dedent('''
    from dataclasses import dataclass
    from pathlib import Path
    import re

    @dataclass
    class Stub:
        model_dir: Path

        def __call__(self, premise: str, hypothesis: str) -> float:
            with open(self.model_dir / "calls.log", "a") as log:
                log.write(f"{len(premise)}\\n")
            words = lambda text: set(re.findall(r"\\w+", text.lower()))
            return 1.0 if words(hypothesis) <= words(premise) else 0.1

    def load(model_dir: Path) -> Stub:
        with open(model_dir / "loads.log", "a") as log:
            log.write("loaded\\n")
        return Stub(model_dir)
''')

CONTEXT = "Annual plans can be refunded within 30 days. Monthly plans are not refundable."


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "adapter.py").write_text(STUB_ADAPTER)
    return tmp_path


def loads(model_dir: Path) -> int:
    path = model_dir / "loads.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_it_is_an_evaluator_and_loads_its_model_lazily(model_dir: Path) -> None:
    evaluator = NliEvaluator(model_dir)
    assert isinstance(evaluator, Evaluator)
    assert evaluator.name == "nli"
    assert not evaluator.loaded and loads(model_dir) == 0
    assert evaluator.score(CONTEXT, "", "").claims == ()  # nothing to check: still not loaded
    assert loads(model_dir) == 0
    evaluator.score(CONTEXT, "", "Annual plans can be refunded within 30 days.")
    evaluator.score(CONTEXT, "", "Monthly plans are not refundable.")
    assert evaluator.loaded and loads(model_dir) == 1


def test_claims_are_judged_by_entailment(model_dir: Path) -> None:
    judgement = NliEvaluator(model_dir).score(
        CONTEXT, "Can I get a refund?",
        "Annual plans can be refunded within 30 days; monthly plans are refundable within 60 days. "
        "The passages do not say anything about gift cards.",
    )
    assert [(c.text, c.verdict, c.reasons) for c in judgement.claims] == [
        ("Annual plans can be refunded within 30 days", Verdict.SUPPORTED, ("entailment 1.00",)),
        ("monthly plans are refundable within 60 days.", Verdict.UNSUPPORTED, ("entailment 0.10 < 0.50",)),
        ("The passages do not say anything about gift cards.", Verdict.ABSTENTION, ("abstains",)),
    ]
    weights = [c.weight for c in judgement.claims]
    assert judgement.score == pytest.approx(weights[1] / sum(weights))
    assert judgement.evaluator == "nli"


def test_empty_context_leaves_only_abstentions_supported(model_dir: Path) -> None:
    judgement = NliEvaluator(model_dir).score("", "", "Refunds take 30 days. I don't know more.")
    assert [(c.verdict, c.reasons) for c in judgement.claims] == [
        (Verdict.UNSUPPORTED, ("context is empty",)), (Verdict.ABSTENTION, ("abstains",)),
    ]


def test_the_context_is_read_in_windows_of_whole_sentences(model_dir: Path) -> None:
    context = " ".join(f"Fact number {i} is true." for i in range(40))  # about 900 characters
    evaluator = NliEvaluator(model_dir, max_premise_chars=200)
    judgement = evaluator.score(context, "", "Fact number 39 is true.")
    assert judgement.claims[0].verdict is Verdict.SUPPORTED  # found in the last window only
    calls = [int(n) for n in (model_dir / "calls.log").read_text().split()]
    assert len(calls) == len(premise_windows(context, 200)) > 1
    assert max(calls) <= 200
    assert premise_windows("One. Two.", 5) == ["One.", "Two."]
    assert premise_windows("A sentence longer than the window.", 10) == ["A sentence"]


def test_an_entry_point_in_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "operator_nli_stub.py").write_text(
        "def load(model_dir):\n    return lambda premise, hypothesis: 0.4\n"
    )
    monkeypatch.syspath_prepend(str(package))
    model = tmp_path / "model"
    model.mkdir()
    (model / "nli.json").write_text(json.dumps({"entry_point": "operator_nli_stub:load", "threshold": 0.3}))
    try:
        judgement = NliEvaluator(model).score(CONTEXT, "", "Annual plans can be refunded.")
    finally:
        sys.modules.pop("operator_nli_stub", None)
    assert [(c.verdict, c.reasons) for c in judgement.claims] == [(Verdict.SUPPORTED, ("entailment 0.40",))]
    # An explicit threshold wins over the manifest's.
    model_eval = NliEvaluator(model, entailment_threshold=0.5)
    monkeypatch.syspath_prepend(str(package))
    try:
        judgement = model_eval.score(CONTEXT, "", "Annual plans can be refunded.")
    finally:
        sys.modules.pop("operator_nli_stub", None)
    assert [(c.verdict, c.reasons) for c in judgement.claims] == [(Verdict.UNSUPPORTED, ("entailment 0.40 < 0.50",))]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "has neither adapter.py nor an entry_point in nli.json"),
        ({"adapter.py": "x = 1\n"}, r"defines no load\(model_dir\) function"),
        ({"adapter.py": "raise ImportError('onnxruntime missing')\n"}, "importing the adapter failed"),
        ({"adapter.py": "def load(model_dir):\n    raise FileNotFoundError('model.onnx')\n"},
         "loading the NLI model in .* failed: FileNotFoundError"),
        ({"adapter.py": "def load(model_dir):\n    return 42\n"}, "returned int, not a callable"),
        ({"nli.json": "[1, 2]"}, "not a JSON object"),
        ({"nli.json": '{"entry_point": "no_such_module_here:load"}'}, "cannot import 'no_such_module_here'"),
        ({"nli.json": '{"entry_point": "json"}'}, "is not 'package.module:function'"),
    ],
)
def test_an_unusable_directory_says_why(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    evaluator = NliEvaluator(tmp_path)
    with pytest.raises(NliModelError, match=message):
        evaluator.load()
    assert not evaluator.loaded


def test_a_missing_directory_fails_at_load_not_at_construction(tmp_path: Path) -> None:
    evaluator = NliEvaluator(tmp_path / "absent")
    with pytest.raises(NliModelError, match="does not exist"):
        evaluator.score(CONTEXT, "", "Annual plans can be refunded.")


@pytest.mark.parametrize("answer", ["1.5", "-0.1", "float('nan')", "'0.9'", "True"])
def test_a_model_answer_that_is_not_a_probability_is_refused(tmp_path: Path, answer: str) -> None:
    (tmp_path / "adapter.py").write_text(f"def load(model_dir):\n    return lambda p, h: {answer}\n")
    with pytest.raises(NliModelError, match="not a probability in"):
        NliEvaluator(tmp_path).score(CONTEXT, "", "Annual plans can be refunded.")


def test_the_model_is_called_from_one_thread_at_a_time(tmp_path: Path) -> None:
    (tmp_path / "adapter.py").write_text(textwrap.dedent('''
        import threading, time
        class Model:
            def __init__(self):
                self.inside = 0
                self.most = 0
                self.guard = threading.Lock()
            def __call__(self, premise, hypothesis):
                with self.guard:
                    self.inside += 1
                    self.most = max(self.most, self.inside)
                time.sleep(0.001)
                with self.guard:
                    self.inside -= 1
                return 0.9
        def load(model_dir):
            return Model()
    '''))
    evaluator = NliEvaluator(tmp_path)
    model = evaluator.load()
    threads = [threading.Thread(target=evaluator.score, args=(CONTEXT, "", "Annual plans can be refunded. Monthly "
                                                              "plans are not refundable."))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.most == 1  # type: ignore[attr-defined]


def test_evaluators_are_built_by_name(model_dir: Path) -> None:
    assert build_evaluator().name == "groundedness"
    nli = build_evaluator("nli", model_dir=model_dir)
    assert isinstance(nli, NliEvaluator) and not nli.loaded
    with pytest.raises(ValueError, match="needs the directory"):
        build_evaluator("nli")
    with pytest.raises(ValueError, match="unknown evaluator 'llm'; known: groundedness, embedding, nli"):
        build_evaluator("llm")
