"""Stage 5, route: which of an alias' deployments to try, in which order, as a plan.

    plan.py      RoutingPlan, ShadowCopy and the RoutingStrategy interface
    stage.py     the stage: data class, budget downgrade, asks the strategy, applies the plan
    data_classes.py  the data-class rule: request_class(ctx), permits(class, deployment)
    fallbacks.py within_policy: the rule on every deployment, then the alias' fallbacks
    weighted.py  strategy: a weighted draw, the rest as fallbacks
    rollout.py   strategy: sticky canary/stable per rollout, else weighted
    shadow.py    strategy: another's plan plus the shadow copies policy asks for (the runtime's)
    uniform.py   uniform(rollout_id, subject): deterministic, sticky draws for rollouts
"""

from gateway.routing.data_classes import DataClassPolicy, permits, permitted, request_class
from gateway.routing.plan import RoutingPlan, RoutingStrategy, ShadowCopy
from gateway.routing.rollout import RolloutStrategy
from gateway.routing.shadow import ShadowStrategy
from gateway.routing.stage import Downgrades, Route
from gateway.routing.uniform import uniform
from gateway.routing.weighted import Weighted, order_deployments

__all__ = [
    "DataClassPolicy", "Downgrades", "RolloutStrategy", "Route", "RoutingPlan", "RoutingStrategy", "ShadowCopy",
    "ShadowStrategy", "Weighted", "order_deployments", "permits", "permitted", "request_class", "uniform",
]
