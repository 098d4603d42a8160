"""A hook for a local NLI model the operator supplies on disk (issue 14, scope 1 d).

The gateway ships no NLI weights and never downloads any. An operator who has a model (HHEM,
MiniCheck, an ONNX export, ...) puts it in a directory with a small Python adapter, and the
evaluator loads it lazily, on the first answer it scores (or at start-up with :meth:`load`).

**The directory's contract.** It holds either:

- ``adapter.py``, defining ``load(model_dir: pathlib.Path) -> EntailmentModel``; or
- ``nli.json``, ``{"entry_point": "package.module:load"}`` naming an importable factory of the
  same signature (the package installed in the gateway's environment), and optionally
  ``"max_premise_chars"`` and ``"threshold"``.

``EntailmentModel`` is any callable ``(premise: str, hypothesis: str) -> float`` returning the
probability in [0, 1] that the premise entails the hypothesis. It runs synchronously in the
scoring worker; it must not download anything, and it is called from one thread at a time.

**Scoring.** The answer is split into claims exactly as the default evaluator splits it, and
abstentions are recognised the same way (supported). Each other claim is checked against the
context in windows of whole sentences of at most ``max_premise_chars`` (NLI models read a few
hundred tokens), and its entailment is the best over the windows. A claim whose entailment is
below ``entailment_threshold`` is unsupported ("entailment 0.12 < 0.50"). The score is the share
of unsupported claims weighted by claim length, as in the default evaluator.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

from gateway.scoring.evaluator import ClaimVerdict, Judgement, Verdict, weighted_score
from gateway.scoring.groundedness import claims_of, content_words, is_abstention, normalise, sentences, words


class EntailmentModel(Protocol):
    """What an operator's adapter returns: P(premise entails hypothesis), in [0, 1]."""

    def __call__(self, premise: str, hypothesis: str) -> float: ...


class NliModelError(RuntimeError):
    """The model directory cannot be loaded, or the model answered something other than a probability."""


ADAPTER_FILE = "adapter.py"
MANIFEST_FILE = "nli.json"


def load_model(model_dir: Path) -> tuple[EntailmentModel, dict[str, Any]]:
    """The model of an operator's directory, and its manifest (empty without ``nli.json``)."""
    if not model_dir.is_dir():
        raise NliModelError(f"NLI model directory {str(model_dir)!r} does not exist")
    manifest: dict[str, Any] = {}
    manifest_path = model_dir / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            loaded = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NliModelError(f"{manifest_path}: not a JSON object ({exc})") from exc
        if not isinstance(loaded, dict):
            raise NliModelError(f"{manifest_path}: not a JSON object")
        manifest = loaded
    factory: Callable[[Path], Any]
    if "entry_point" in manifest:
        factory = _entry_point(str(manifest["entry_point"]))
    elif (model_dir / ADAPTER_FILE).is_file():
        factory = _adapter_factory(model_dir / ADAPTER_FILE)
    else:
        raise NliModelError(
            f"NLI model directory {str(model_dir)!r} has neither {ADAPTER_FILE} nor an entry_point in {MANIFEST_FILE}"
        )
    try:
        model = factory(model_dir)
    except Exception as exc:  # the operator's code: whatever it raises, say where it came from
        raise NliModelError(f"loading the NLI model in {str(model_dir)!r} failed: {exc!r}") from exc
    if not callable(model):
        raise NliModelError(f"the NLI adapter in {str(model_dir)!r} returned {type(model).__name__}, not a callable")
    return cast(EntailmentModel, model), manifest


def _entry_point(spec: str) -> Callable[[Path], Any]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise NliModelError(f"entry_point {spec!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NliModelError(f"entry_point {spec!r}: cannot import {module_name!r} ({exc})") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise NliModelError(f"entry_point {spec!r}: {attribute!r} is not a function of {module_name!r}")
    return cast(Callable[[Path], Any], factory)


def _adapter_factory(path: Path) -> Callable[[Path], Any]:
    # A module of its own name per directory, never on sys.path; it is registered in sys.modules
    # (dataclasses and pickling look their module up there).
    name = f"gateway_nli_adapter_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise NliModelError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise NliModelError(f"{path}: importing the adapter failed: {exc!r}") from exc
    factory = getattr(module, "load", None)
    if not callable(factory):
        raise NliModelError(f"{path} defines no load(model_dir) function")
    return cast(Callable[[Path], Any], factory)


def premise_windows(context: str, max_chars: int) -> list[str]:
    """The context in windows of whole sentences, each at most ``max_chars`` (a longer sentence is cut)."""
    windows: list[str] = []
    current = ""
    for sentence in sentences(context):
        sentence = sentence[:max_chars]
        if current and len(current) + 1 + len(sentence) > max_chars:
            windows.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        windows.append(current)
    return windows


class NliEvaluator:
    """Scores claims by entailment from the context, with an operator's model loaded lazily."""

    def __init__(self, model_dir: str | Path, *, entailment_threshold: float | None = None,
                 max_premise_chars: int | None = None, max_claims: int = 64, threshold: float = 0.0,
                 max_answer_chars: int = 20_000) -> None:
        self.model_dir = Path(model_dir)
        self._entailment_threshold = entailment_threshold
        self._max_premise_chars = max_premise_chars
        self.max_claims = max_claims
        self.threshold = threshold
        self.max_answer_chars = max_answer_chars
        self._model: EntailmentModel | None = None
        self._manifest: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: The model is called from one thread at a time (the contract), however many workers share this.
        self._calls = threading.Lock()

    @property
    def name(self) -> str:
        return "nli"

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def entailment_threshold(self) -> float:
        if self._entailment_threshold is not None:
            return self._entailment_threshold
        return float(self._manifest.get("threshold", 0.5))

    @property
    def max_premise_chars(self) -> int:
        if self._max_premise_chars is not None:
            return self._max_premise_chars
        return int(self._manifest.get("max_premise_chars", 2000))

    def load(self) -> EntailmentModel:
        """Load the model now (once); raises :class:`NliModelError` when the directory is unusable."""
        with self._lock:
            if self._model is None:
                self._model, self._manifest = load_model(self.model_dir)
            return self._model

    def score(self, context: str, question: str, answer: str) -> Judgement:
        text = normalise(answer[: self.max_answer_chars])
        claims = [claim for sentence in sentences(text) for claim in claims_of(sentence)][: self.max_claims]
        if not claims:
            return Judgement(0.0, (), self.name, self.threshold)
        model = self.load()
        windows = premise_windows(normalise(context), self.max_premise_chars)
        verdicts: list[ClaimVerdict] = []
        for claim, _ in claims:
            weight = float(max(1, len(content_words(words(claim)))))
            if is_abstention(claim):
                verdicts.append(ClaimVerdict(claim, Verdict.ABSTENTION, ("abstains",), None, weight))
                continue
            if not windows:
                verdicts.append(ClaimVerdict(claim, Verdict.UNSUPPORTED, ("context is empty",), None, weight))
                continue
            with self._calls:
                best = max(self._entailment(model, window, claim) for window in windows)
            if best < self.entailment_threshold:
                reason = f"entailment {best:.2f} < {self.entailment_threshold:.2f}"
                verdicts.append(ClaimVerdict(claim, Verdict.UNSUPPORTED, (reason,), None, weight))
            else:
                verdicts.append(ClaimVerdict(claim, Verdict.SUPPORTED, (f"entailment {best:.2f}",), None, weight))
        claims_judged = tuple(verdicts)
        return Judgement(weighted_score(claims_judged), claims_judged, self.name, self.threshold)

    @staticmethod
    def _entailment(model: EntailmentModel, premise: str, hypothesis: str) -> float:
        value = model(premise, hypothesis)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or \
                not 0.0 <= value <= 1.0:
            raise NliModelError(f"the NLI model returned {value!r}, not a probability in [0, 1]")
        return float(value)
