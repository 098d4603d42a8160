"""Prices per token: litellm's bundled price map, overridden by the model policy.

litellm ships ``model_prices_and_context_window_backup.json`` inside its package. Importing
litellm costs seconds and hundreds of MiB, so the file is located with
``importlib.util.find_spec`` (which does not execute the package) and read as plain JSON.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

_PRICE_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token. ``max_output_tokens`` bounds a request's worst-case cost."""

    input_per_token: float
    output_per_token: float
    max_output_tokens: int | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


FREE = Price(0.0, 0.0, None)


def litellm_package_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def price_map() -> dict[str, Any]:
    """litellm's price map, or ``{}`` when litellm is not installed (prices must then be explicit)."""
    package = litellm_package_dir()
    if package is None or not (package / _PRICE_FILE).exists():
        return {}
    data: dict[str, Any] = orjson.loads((package / _PRICE_FILE).read_bytes())
    data.pop("sample_spec", None)
    return data


def _candidates(model: str, provider: str | None) -> list[str]:
    candidates = [model]
    if provider:
        candidates.append(f"{provider}/{model}")
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    return candidates


def context_window(model: str, provider: str | None = None) -> int | None:
    """The price map's ``max_input_tokens`` for ``model`` (the prompt's limit), if it has one."""
    prices = price_map()
    for name in _candidates(model, provider):
        entry = prices.get(name)
        if entry and isinstance(entry.get("max_input_tokens"), int) and entry["max_input_tokens"] > 0:
            return int(entry["max_input_tokens"])
    return None


def lookup(model: str, provider: str | None = None) -> Price | None:
    """The price-map entry for ``model`` (tried bare and as ``provider/model``), if any."""
    prices = price_map()
    for name in _candidates(model, provider):
        entry = prices.get(name)
        if not entry:
            continue
        input_cost = entry.get("input_cost_per_token")
        output_cost = entry.get("output_cost_per_token", 0.0)
        if input_cost is None:
            continue
        max_out = entry.get("max_output_tokens") or entry.get("max_tokens")
        return Price(float(input_cost), float(output_cost or 0.0), int(max_out) if max_out else None)
    return None


NANOS_PER_USD = 1_000_000_000


def to_nanos(usd: float) -> int:
    """USD as integer nano-dollars: the one rounding used by budgets, the ledger and reports,
    so that their sums agree exactly."""
    return round(usd * NANOS_PER_USD)


def from_nanos(nanos: int) -> float:
    return nanos / NANOS_PER_USD
