"""Progressive rollouts of prompts and model aliases (issue 11).

    model.py   Rollout: one rollout as the request path sees it, built with the catalog
    book.py    RolloutBook: each rollout's live weight, from its stored state
    state.py   RolloutState and the store of it (table ``rollout_state``)
    control.py start / pause / resume / promote / abort, each audited (CLI and admin API)

The routing strategy is ``gateway/routing/rollout.py``; the policy schema is
``gateway/config/rollouts.py``.
"""

from gateway.rollouts.book import RolloutBook
from gateway.rollouts.model import Rollout, RolloutIndex, build_rollouts, subject_of

__all__ = ["Rollout", "RolloutBook", "RolloutIndex", "build_rollouts", "subject_of"]
