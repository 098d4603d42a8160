"""Shadow traffic: copies of callers' requests sent to another model or prompt version after
the caller's answer, compared with it, charged to the team's shadow budget scope.

    rules.py    the policy's rules as the request path sees them (built with the catalog)
    runner.py   the record-stage sink that sends copies in the background, bounded and timed
    compare.py  how a shadow answer compares with the primary's
    report.py   agreement, latency and cost per rule (``gateway shadow report``, /admin/shadow)
    feature.py  build_shadows(settings, db, core=, registry=, permits=): the feature's factory

The routing strategy that puts copies on a request's plan is ``gateway.routing.shadow``.
This module imports only the rules: the catalog needs them, and nothing heavier.
"""

from gateway.shadow.rules import ShadowIndex, ShadowRule, build_shadow_index

__all__ = ["ShadowIndex", "ShadowRule", "build_shadow_index"]
