"""Stage 4, route: which of an alias' deployments to try, in which order."""

from gateway.routing.weighted import Route, order_deployments

__all__ = ["Route", "order_deployments"]
