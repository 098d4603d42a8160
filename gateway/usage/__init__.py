"""Stage 7, usage: token counts and cost of every answer (see ``gateway.usage.stage``).

    stage.py   the stage: price reported usage, count what was not reported
    tokens.py  tokenizers per deployment, built only when needed, and the counting rules
    bpe.py     the compact exact counter used until counting is frequent enough for tiktoken
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.features import Feature
from gateway.usage.stage import MeterUsage, price_usage
from gateway.usage.tokens import TokenCounter

if TYPE_CHECKING:
    from gateway.catalog import Catalog
    from gateway.config.settings import Settings

__all__ = ["MeterUsage", "UsageFeature", "build_usage", "price_usage"]


@dataclass
class UsageFeature(Feature):
    meter: MeterUsage | None = None  # the stage, typed: the budget feature counts prompts with it


def build_usage(settings: Settings, catalog: Catalog) -> UsageFeature:
    """The usage stage and the token counter it shares with the budget stage.

    A missing encoding file stops start-up here (the files are hashed: milliseconds). Nothing
    is built yet: each encoding costs 3-6 MiB and ~0.3 s of CPU (tiktoken's, once counting is
    frequent, 40-50 MiB), and a gateway whose upstreams all report usage, without budgets, may
    never need one.
    """
    directory = settings.tokens.encodings_dir
    tokens = TokenCounter(settings.resolve_path(directory) if directory is not None else None)
    tokens.verify(catalog)
    meter = MeterUsage(tokens)
    return UsageFeature(stage=meter, meter=meter)
