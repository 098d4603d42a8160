"""The resolve stage in process, over a catalog built by the real policy code: an alias found,
an unknown one (404 with the hint), one the team may not use (403), one of the wrong kind for
the endpoint (400 ``wrong_endpoint``), and ``prompt:`` names with and without a resolver."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.context import Endpoint, JsonReply, Reply, RequestContext
from gateway.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied, error_body
from gateway.resolve import PROMPT_PREFIX, Resolve

MOCK = {"provider": "mock", "model": "m", "free": True}
CATALOG: Catalog = build_catalog(
    PolicyBundle(
        models=ModelsFile.model_validate(
            {
                "aliases": {
                    "chat-small": {"description": "small", "deployments": [MOCK]},
                    "chat-big": {"deployments": [MOCK, {**MOCK, "model": "m2"}]},
                    "embed": {"kind": "embedding", "deployments": [MOCK]},
                }
            }
        ),
        teams=TeamsFile.model_validate(
            {
                "teams": {
                    "alpha": {"models": ["chat-*", "embed"]},
                    "beta": {"models": ["chat-small"]},
                    "nobody": {"models": []},
                }
            }
        ),
    )
)
HINT = "; GET /v1/models lists the models and prompts this key may call."


def principal(team: str) -> Principal:
    return Principal(key_id=f"key_{team}", team=team, roles=frozenset({"app"}))


def context(model: str, team: str | None = "alpha", endpoint: Endpoint = Endpoint.CHAT) -> RequestContext:
    ctx = RequestContext(request_id="req-1", endpoint=endpoint, raw_body=b"{}", authorization=None, catalog=CATALOG)
    ctx.principal = principal(team) if team is not None else None
    ctx.requested_model = model
    return ctx


class Next:
    def __init__(self) -> None:
        self.calls: list[RequestContext] = []
        self.reply = JsonReply(status=200, body=b"{}")

    async def __call__(self, ctx: RequestContext) -> Reply:
        self.calls.append(ctx)
        return self.reply


class StubPrompts:
    """A prompt resolver that maps references to aliases from a table, and remembers each call."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.calls: list[tuple[RequestContext, str]] = []

    async def resolve(self, ctx: RequestContext, reference: str) -> str:
        self.calls.append((ctx, reference))
        if reference not in self.aliases:
            raise NotFound(f"The prompt '{reference}' does not exist.", param="model", code="prompt_not_found")
        ctx.prompt_name = reference.partition("@")[0]
        ctx.body = {"model": self.aliases[reference], "messages": [{"role": "system", "content": "rendered"}]}
        return self.aliases[reference]


async def refused(stage: Resolve, ctx: RequestContext) -> tuple[GatewayError, dict[str, Any]]:
    """The error the stage raises (never calling the next stage) and its wire form."""
    after = Next()
    with pytest.raises(GatewayError) as caught:
        await stage(ctx, after)
    assert after.calls == []
    assert ctx.alias is None
    return caught.value, orjson.loads(error_body(caught.value))["error"]


def test_the_prompt_prefix() -> None:
    assert PROMPT_PREFIX == "prompt:"


@pytest.mark.parametrize(
    ("team", "model", "endpoint"),
    [
        ("alpha", "chat-small", Endpoint.CHAT),
        ("alpha", "chat-big", Endpoint.CHAT),  # allowed by a glob
        ("beta", "chat-small", Endpoint.CHAT),
        ("alpha", "embed", Endpoint.EMBEDDINGS),
        ("admin", "chat-big", Endpoint.CHAT),  # the bootstrap admin team may call every alias
        ("admin", "embed", Endpoint.EMBEDDINGS),
    ],
)
async def test_an_allowed_alias_is_set_on_the_context(team: str, model: str, endpoint: Endpoint) -> None:
    ctx = context(model, team, endpoint)
    after = Next()
    reply = await Resolve()(ctx, after)
    assert reply is after.reply
    assert after.calls == [ctx]
    assert ctx.alias is CATALOG.aliases[model]
    assert ctx.alias.name == model
    assert ctx.prompt_name is None


async def test_the_alias_carries_its_deployments_from_the_policy() -> None:
    ctx = context("chat-big")
    await Resolve()(ctx, Next())
    assert ctx.alias is not None
    assert ctx.alias.kind == "chat"
    assert [d.id for d in ctx.alias.deployments] == ["chat-big#0", "chat-big#1"]
    assert [d.label for d in ctx.alias.deployments] == ["mock/m", "mock/m2"]


@pytest.mark.parametrize("model", ["nope", "CHAT-SMALL", "chat-small ", "chat-*", "prompt"])
async def test_an_unknown_alias_is_a_404_with_the_hint(model: str) -> None:
    error, wire = await refused(Resolve(), context(model))
    assert type(error) is NotFound
    assert error.status == 404
    assert wire == {
        "message": f"The model '{model}' does not exist{HINT}",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


async def test_an_unknown_alias_is_a_404_whatever_the_team() -> None:
    error, _ = await refused(Resolve(), context("nope", "nobody"))
    assert error.status == 404


@pytest.mark.parametrize(
    ("team", "model"),
    [
        ("beta", "chat-big"),  # not in the team's list
        ("beta", "embed"),
        ("nobody", "chat-small"),  # an empty list allows nothing
        ("ghost", "chat-small"),  # a team the policy does not know
    ],
)
async def test_an_alias_the_team_may_not_use_is_a_403(team: str, model: str) -> None:
    error, wire = await refused(Resolve(), context(model, team))
    assert type(error) is PermissionDenied
    assert error.status == 403
    assert wire == {
        "message": f"Team '{team}' may not use the model '{model}'.",
        "type": "permission_error",
        "param": "model",
        "code": "model_not_allowed",
    }


async def test_without_a_principal_the_team_is_anonymous_and_refused() -> None:
    error, wire = await refused(Resolve(), context("chat-small", team=None))
    assert error.status == 403
    assert wire["message"] == "Team 'anonymous' may not use the model 'chat-small'."


async def test_an_embedding_alias_on_the_chat_endpoint_is_a_400_wrong_endpoint() -> None:
    error, wire = await refused(Resolve(), context("embed", "alpha", Endpoint.CHAT))
    assert type(error) is InvalidRequest
    assert error.status == 400
    assert wire == {
        "message": "The model 'embed' is an embedding model and cannot serve this endpoint.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "wrong_endpoint",
    }


async def test_a_chat_alias_on_the_embeddings_endpoint_is_a_400_wrong_endpoint() -> None:
    error, wire = await refused(Resolve(), context("chat-small", "alpha", Endpoint.EMBEDDINGS))
    assert error.status == 400
    assert wire == {
        "message": "The model 'chat-small' is a chat model and cannot serve this endpoint.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "wrong_endpoint",
    }


async def test_the_team_is_checked_before_the_endpoint() -> None:
    # A team that may not use an alias learns nothing about what kind of model it is.
    error, _ = await refused(Resolve(), context("embed", "beta", Endpoint.CHAT))
    assert error.status == 403


# -- prompt: names --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["prompt:greet", "prompt:greet@production", "prompt:"])
async def test_a_prompt_without_a_prompt_resolver_is_a_404(model: str) -> None:
    error, wire = await refused(Resolve(), context(model))
    assert type(error) is NotFound
    assert wire == {
        "message": f"The model '{model}' does not exist{HINT}",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


async def test_a_prompt_resolves_to_the_alias_its_resolver_names() -> None:
    prompts = StubPrompts({"greet@production": "chat-small"})
    ctx = context("prompt:greet@production")
    after = Next()
    reply = await Resolve(prompts)(ctx, after)
    assert reply is after.reply
    assert after.calls == [ctx]
    assert prompts.calls == [(ctx, "greet@production")], "called once, with the prefix removed"
    assert ctx.alias is CATALOG.aliases["chat-small"]
    assert ctx.prompt_name == "greet"
    assert ctx.requested_model == "prompt:greet@production", "the caller's name is kept"
    assert ctx.body["messages"] == [{"role": "system", "content": "rendered"}]


async def test_a_plain_alias_does_not_ask_the_prompt_resolver() -> None:
    prompts = StubPrompts({"chat-small": "chat-big"})
    ctx = context("chat-small")
    await Resolve(prompts)(ctx, Next())
    assert prompts.calls == []
    assert ctx.alias is CATALOG.aliases["chat-small"]


async def test_a_prompt_on_the_embeddings_endpoint_is_a_404_without_asking_the_resolver() -> None:
    prompts = StubPrompts({"greet": "embed"})
    error, wire = await refused(Resolve(prompts), context("prompt:greet", "alpha", Endpoint.EMBEDDINGS))
    assert error.status == 404
    assert wire["message"] == f"The model 'prompt:greet' does not exist{HINT}"
    assert prompts.calls == []


async def test_the_alias_a_prompt_names_goes_through_the_teams_policy() -> None:
    prompts = StubPrompts({"greet": "chat-big"})
    error, wire = await refused(Resolve(prompts), context("prompt:greet", "beta"))
    assert error.status == 403
    assert wire["message"] == "Team 'beta' may not use the model 'chat-big'."
    assert len(prompts.calls) == 1


async def test_a_prompt_naming_an_embedding_alias_is_a_wrong_endpoint() -> None:
    prompts = StubPrompts({"greet": "embed"})
    error, wire = await refused(Resolve(prompts), context("prompt:greet"))
    assert (error.status, wire["code"]) == (400, "wrong_endpoint")
    assert wire["message"] == "The model 'embed' is an embedding model and cannot serve this endpoint."


async def test_a_prompt_naming_a_missing_alias_is_a_404_naming_that_alias() -> None:
    prompts = StubPrompts({"greet": "retired-alias"})
    error, wire = await refused(Resolve(prompts), context("prompt:greet"))
    assert error.status == 404
    assert wire["message"] == f"The model 'retired-alias' does not exist{HINT}"


async def test_the_resolvers_own_error_is_passed_on() -> None:
    error, wire = await refused(Resolve(StubPrompts({})), context("prompt:missing"))
    assert (error.status, wire["code"], wire["message"]) == (404, "prompt_not_found",
                                                             "The prompt 'missing' does not exist.")
