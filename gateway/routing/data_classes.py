"""Data classes: which deployments may receive a request, by how sensitive its data is.

Policy (``policies/data_classes.yaml``) orders the classes, lowest first, e.g.
``public < internal < confidential < restricted``, and may ask more of a deployment for one
class through its tags (``restricted: {require_tags: {hosting: [self]}}``). Each deployment
declares the highest class it may receive (``max_data_class`` in ``models.yaml``, default the
lowest) and free-form ``tags``; at catalog build each deployment gets the set of classes it
may receive (:func:`receivable`), so the per-request rule, :func:`permits`, is one set lookup.

A request's class is the highest of its team's default (``data_class`` in ``teams.yaml``,
default the lowest class), its prompt's declared class and the caller's ``x-data-class``
header (:func:`request_class`): a caller can raise its class, never lower it. With no classes
defined the feature is off: requests have no class and every deployment may receive them.

The rule binds every path a request takes. The route stage filters the plan (primary,
fallbacks, a rollout's canary); the upstream stage checks each deployment again right before
calling it (``Deployment.admits``, the same set), so a routing bug cannot send data where it
may not go. Shadow copies and rollouts call :func:`permits` / :func:`permitted`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.errors import DataClassForbidden, InvalidRequest

if TYPE_CHECKING:
    from gateway.catalog import Deployment
    from gateway.config.policies import DataClassesFile
    from gateway.context import RequestContext


@dataclass(frozen=True, slots=True)
class DataClassPolicy:
    """The ordered classes of a catalog and each class' tag requirements."""

    order: tuple[str, ...] = ()
    rank: Mapping[str, int] = field(default_factory=dict)
    # Per class: (tag, accepted values) pairs a deployment must all satisfy.
    require_tags: Mapping[str, tuple[tuple[str, frozenset[str]], ...]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.order)

    @property
    def lowest(self) -> str | None:
        return self.order[0] if self.order else None

    def highest(self, names: Iterable[str | None]) -> str | None:
        """The highest of ``names`` (each known, or ``None`` for "not given")."""
        best: str | None = None
        best_rank = -1
        rank = self.rank
        for name in names:
            if name is not None and rank[name] > best_rank:
                best, best_rank = name, rank[name]
        return best

    def at_most(self, name: str) -> tuple[str, ...]:
        """The classes up to and including ``name``."""
        return self.order[: self.rank[name] + 1]


OFF = DataClassPolicy()


def build_policy(spec: DataClassesFile) -> DataClassPolicy:
    return DataClassPolicy(
        order=tuple(spec.classes),
        rank={name: index for index, name in enumerate(spec.classes)},
        require_tags={
            name: tuple((tag, frozenset(values)) for tag, values in rule.require_tags.items())
            for name, rule in spec.rules.items()
        },
    )


def receivable(policy: DataClassPolicy, max_class: str | None, tags: Mapping[str, str]) -> frozenset[str]:
    """Every class a deployment with this ``max_class`` (default: the lowest) and ``tags`` may
    receive: those up to ``max_class`` whose tag requirements its tags meet. Empty when off."""
    if not policy.enabled:
        return frozenset()
    ceiling = max_class if max_class is not None else policy.order[0]
    return frozenset(
        name
        for name in policy.at_most(ceiling)
        if all(tags.get(tag) in values for tag, values in policy.require_tags.get(name, ()))
    )


def permits(request_class: str | None, deployment: Deployment) -> bool:
    """Whether ``deployment`` may receive a request of ``request_class`` (``None``: classes off).

    Pure and O(1): the deployment carries the set of classes it may receive.
    """
    return deployment.admits(request_class)


def permitted(deployments: Iterable[Deployment], request_class: str | None) -> tuple[Deployment, ...]:
    """``deployments`` (in order) that may receive ``request_class``."""
    if request_class is None:
        return tuple(deployments)
    return tuple(d for d in deployments if request_class in d.data_classes)


def request_class(ctx: RequestContext) -> str | None:
    """The class of ``ctx``: the highest of the team's default, the prompt's and the caller's.

    An unknown class from the caller is a 400 ``unknown_data_class``; so is one a prompt
    declares that the policy no longer defines (the prompt names data the gateway cannot place).
    """
    catalog = ctx.catalog
    policy = catalog.data_classes
    asked = ctx.data_class_header
    if not policy.enabled:
        if asked is not None:
            raise InvalidRequest(
                f"The gateway defines no data classes, so x-data-class '{_clip(asked)}' cannot be honoured.",
                code="unknown_data_class",
                param="x-data-class",
            )
        return None
    if asked is not None and asked not in policy.rank:
        raise InvalidRequest(
            f"Unknown data class '{_clip(asked)}' in x-data-class; the classes are {', '.join(policy.order)}.",
            code="unknown_data_class",
            param="x-data-class",
        )
    declared = ctx.prompt_data_class
    if declared is not None and declared not in policy.rank:
        raise InvalidRequest(
            f"The prompt '{ctx.prompt_name}' declares the data class '{declared}', which the policy does not "
            f"define (classes: {', '.join(policy.order)}).",
            code="unknown_data_class",
            param="model",
        )
    team = catalog.team(ctx.team)
    default = team.spec.data_class if team is not None else None
    return policy.highest((default or policy.lowest, declared, asked))


def forbidden(data_class: str, alias: str) -> DataClassForbidden:
    """The 403 for a request no deployment left in its plan may receive."""
    return DataClassForbidden(
        f"No deployment of the model '{alias}' (or its fallbacks) may receive data of class '{data_class}'.",
        data_class=data_class,
        param="model",
    )


def _clip(text: str) -> str:
    return text if len(text) <= 50 else text[:47] + "..."
