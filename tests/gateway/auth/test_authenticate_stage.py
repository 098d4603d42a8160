"""The authenticate stage in process, over a real ``KeyStore`` on a temporary SQLite database:
a missing header, a scheme other than Bearer, a bad or revoked key (401 each, never echoing the
key), and a good key becoming ``ctx.principal``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.auth import Authenticate, CreatedKey, KeyStore, Principal, bearer_token
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.context import Endpoint, JsonReply, Origin, Reply, RequestContext
from gateway.errors import AuthenticationFailed, error_body
from gateway.storage import open_database

CATALOG: Catalog = build_catalog(PolicyBundle(models=ModelsFile(), teams=TeamsFile()))
ADMIN_KEY = "gw-admin-test-key-0123456789"
MISSING = {
    "message": "Missing API key: send it as 'Authorization: Bearer <key>'.",
    "type": "authentication_error",
    "param": None,
    "code": "missing_api_key",
}
INVALID = {
    "message": "Invalid or revoked API key.",
    "type": "authentication_error",
    "param": None,
    "code": "invalid_api_key",
}


@pytest.fixture(scope="module")
async def keys(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KeyStore]:
    path: Path = tmp_path_factory.mktemp("auth-stage") / "keys.db"
    db = await open_database(f"sqlite:///{path}")
    yield KeyStore(db, admin_key=ADMIN_KEY, cache_ttl_s=60.0)
    await db.close()


@pytest.fixture(scope="module")
async def alpha_key(keys: KeyStore) -> CreatedKey:
    return await keys.create("alpha", ("app", "author"), name="unit")


def context(authorization: bytes | None) -> RequestContext:
    return RequestContext(
        request_id="req-1", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=authorization, catalog=CATALOG
    )


class Next:
    def __init__(self) -> None:
        self.calls: list[RequestContext] = []
        self.reply = JsonReply(status=200, body=b"{}")

    async def __call__(self, ctx: RequestContext) -> Reply:
        self.calls.append(ctx)
        return self.reply


async def refused(keys: KeyStore, authorization: bytes | None) -> dict[str, Any]:
    """The wire error for this header; the next stage is never called and no principal is set."""
    ctx = context(authorization)
    after = Next()
    with pytest.raises(AuthenticationFailed) as caught:
        await Authenticate(keys)(ctx, after)
    assert caught.value.status == 401
    assert after.calls == []
    assert ctx.principal is None
    error: dict[str, Any] = orjson.loads(error_body(caught.value))["error"]
    return error


# -- bearer_token ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer gw-abc", "gw-abc"),
        (b"bearer gw-abc", "gw-abc"),
        (b"BEARER gw-abc", "gw-abc"),
        (b"Bearer   gw-abc  ", "gw-abc"),
        (b"Bearer gw-abc def", "gw-abc def"),  # the rest of the header, whatever it holds
        (None, None),
        (b"", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (b"Bearer    ", None),
        (b"Basic dXNlcjpwYXNz", None),
        (b"Token gw-abc", None),
        (b"gw-abc", None),
        (b"Bearer\tgw-abc", None),  # the scheme ends at a space
        (b"Bearer gw-\xc3\xa9", "gw-\xc3\xa9"),  # not ASCII: kept, so the lookup calls it invalid
    ],
)
def test_bearer_token(header: bytes | None, token: str | None) -> None:
    assert bearer_token(header) == token


# -- the stage ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, b"", b"Bearer", b"Bearer    "])
async def test_a_missing_key_is_a_401_missing_api_key(keys: KeyStore, header: bytes | None) -> None:
    assert await refused(keys, header) == MISSING


@pytest.mark.parametrize("scheme", [b"Basic", b"Token", b"Digest", b"Bearer:"])
async def test_a_good_key_under_another_scheme_is_a_401_missing_api_key(
    keys: KeyStore, alpha_key: CreatedKey, scheme: bytes
) -> None:
    assert await refused(keys, scheme + b" " + alpha_key.secret.encode()) == MISSING


async def test_a_bare_key_without_a_scheme_is_a_401_missing_api_key(keys: KeyStore, alpha_key: CreatedKey) -> None:
    assert await refused(keys, alpha_key.secret.encode()) == MISSING


@pytest.mark.parametrize(
    "token",
    [b"gw-not-a-key", b"sk-live-0123456789abcdef", b"x", b"gw-\xc3\xa9"],
)
async def test_a_bad_key_is_a_401_that_never_echoes_it(keys: KeyStore, token: bytes) -> None:
    error = await refused(keys, b"Bearer " + token)
    # A key with non-ASCII bytes was sent, so it is invalid, not missing.
    assert error == INVALID
    assert token.decode() not in orjson.dumps(error).decode()


async def test_a_key_that_differs_by_one_character_is_refused(keys: KeyStore, alpha_key: CreatedKey) -> None:
    secret = alpha_key.secret
    altered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert await refused(keys, b"Bearer " + altered.encode()) == INVALID
    assert await refused(keys, b"Bearer " + secret[:-1].encode()) == INVALID


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER"])
async def test_a_good_key_becomes_the_principal(keys: KeyStore, alpha_key: CreatedKey, scheme: bytes) -> None:
    ctx = context(scheme + b" " + alpha_key.secret.encode())
    after = Next()
    reply = await Authenticate(keys)(ctx, after)
    assert reply is after.reply
    assert after.calls == [ctx]
    assert ctx.principal == Principal(
        key_id=alpha_key.record.key_id, team="alpha", roles=frozenset({"app", "author"})
    )
    assert ctx.team == "alpha"


async def test_a_good_key_with_surrounding_spaces_is_accepted(keys: KeyStore, alpha_key: CreatedKey) -> None:
    ctx = context(b"Bearer   " + alpha_key.secret.encode() + b"  ")
    await Authenticate(keys)(ctx, Next())
    assert ctx.principal is not None
    assert ctx.principal.key_id == alpha_key.record.key_id


async def test_each_key_maps_to_its_own_team(keys: KeyStore, alpha_key: CreatedKey) -> None:
    beta = await keys.create("beta")
    ctx_alpha, ctx_beta = context(b"Bearer " + alpha_key.secret.encode()), context(b"Bearer " + beta.secret.encode())
    stage = Authenticate(keys)
    await stage(ctx_alpha, Next())
    await stage(ctx_beta, Next())
    assert ctx_beta.principal == Principal(key_id=beta.record.key_id, team="beta", roles=frozenset({"app"}))
    assert ctx_alpha.principal is not None
    assert ctx_alpha.principal.team == "alpha"


async def test_the_admin_key_is_the_admin_principal(keys: KeyStore) -> None:
    ctx = context(b"Bearer " + ADMIN_KEY.encode())
    await Authenticate(keys)(ctx, Next())
    assert ctx.principal == Principal(
        key_id="admin", team="admin", roles=frozenset({"app", "author", "approver", "finance", "admin"})
    )


async def test_a_revoked_key_is_a_401_invalid_api_key(keys: KeyStore) -> None:
    created = await keys.create("gamma")
    header = b"Bearer " + created.secret.encode()
    ctx = context(header)
    await Authenticate(keys)(ctx, Next())
    assert ctx.principal is not None
    assert ctx.principal.team == "gamma"
    assert await keys.revoke(created.record.key_id) is True
    assert await refused(keys, header) == INVALID


async def test_errors_from_the_next_stage_pass_through(keys: KeyStore, alpha_key: CreatedKey) -> None:
    class Boom(Exception):
        pass

    async def failing(ctx: RequestContext) -> Reply:
        raise Boom

    ctx = context(b"Bearer " + alpha_key.secret.encode())
    with pytest.raises(Boom):
        await Authenticate(keys)(ctx, failing)
    assert ctx.principal is not None


# -- who is checked: decided by the request's origin ------------------------------------------


async def test_a_preset_principal_is_trusted_only_for_internal_origins(keys: KeyStore) -> None:
    preset = Principal(key_id="eval", team="alpha", roles=frozenset({"app"}))
    smuggled = context(None)
    smuggled.principal = preset  # a caller's request: the preset principal counts for nothing
    with pytest.raises(AuthenticationFailed) as caught:
        await Authenticate(keys)(smuggled, Next())
    assert caught.value.code == "missing_api_key"

    internal = context(None)
    internal.origin = Origin.EVAL
    internal.principal = preset
    after = Next()
    assert await Authenticate(keys)(internal, after) is after.reply
    assert after.calls == [internal]
    assert internal.principal is preset
