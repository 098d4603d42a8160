"""Redaction of trace content: each default masker, the four policies, per-team and per-alias
policies, and the W3C traceparent a request may join."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.servers import stage_catalog
from gateway.auth import Principal
from gateway.catalog import Team
from gateway.config.policies import TeamSpec
from gateway.context import Endpoint, RequestContext
from gateway.redact import SECRETS
from gateway.tracing import maskers
from gateway.tracing.exporter import parse_traceparent
from gateway.tracing.maskers import MASKERS, Masker
from gateway.tracing.maskers.card import luhn_valid
from gateway.tracing.maskers.iban import iban_valid
from gateway.tracing.policy import TracePolicies, TracePolicy
from gateway.tracing.redaction import Redactor

#: A deployment's own masker, loaded by import path in the test below.
EMPLOYEE = Masker("employee", re.compile(r"\bEMP-\d{5}\b"))
REDACTOR = Redactor(list(MASKERS.values()), hash_key=b"k" * 32)

FOUND = [
    ("email", "write to ana.lopez+work@mail.example.co.uk today", "ana.lopez+work@mail.example.co.uk"),
    ("card", "card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111"),
    ("card", "card 5500-0000-0000-0004", "5500-0000-0000-0004"),
    ("card", "amex 378282246310005.", "378282246310005"),
    ("iban", "pay DE89 3704 0044 0532 0130 00 now", "DE89 3704 0044 0532 0130 00"),
    ("iban", "GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("ip", "from 192.168.10.254 via", "192.168.10.254"),
    ("ip", "v6 2001:db8::8a2e:370:7334 ok", "2001:db8::8a2e:370:7334"),
    ("phone", "call +1 (415) 555-0134 now", "+1 (415) 555-0134"),
    ("phone", "tel 030 1234 5678", "030 1234 5678"),
    ("phone", "or +44 20 7946 0958.", "+44 20 7946 0958"),
    ("secret", "key sk-proj-abcdefghijklmnop1234", "sk-proj-abcdefghijklmnop1234"),
    ("secret", "aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("secret", "Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
]

KEPT = [
    "order 4111 1111 1111 1112 (fails Luhn)",
    "iban DE89 3704 0044 0532 0130 02 (fails mod-97 and Luhn)",
    "on 2026-12-05 at 12:30:45",
    "pi is 3.14159265",
    "version 1.2.3.4.5",
    "999.1.1.1 is not an address",
    "the year 2026 and 42 things",
]


@pytest.mark.parametrize(("kind", "text", "secret"), FOUND, ids=[f"{k}-{n}" for n, (k, _, _) in enumerate(FOUND)])
def test_each_default_masker_finds_its_kind(kind: str, text: str, secret: str) -> None:
    masked = REDACTOR.content(text, "mask")
    assert masked is not None and secret not in masked
    # Key shapes the log scrubber knows too are gone before the maskers run.
    assert f"[{kind}]" in masked or (kind == "secret" and "[redacted]" in masked)


@pytest.mark.parametrize("text", KEPT)
def test_what_only_looks_like_personal_data_is_kept(text: str) -> None:
    assert REDACTOR.content(text, "mask") == text


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")


def test_the_four_policies() -> None:
    text = "I am ana@example.com, card 4111111111111111, key sk-abcdefghijklmnop."
    assert REDACTOR.content("aws AKIAIOSFODNN7EXAMPLE", "full") == "aws [secret]"  # a shape only the masker knows
    assert REDACTOR.content(text, "none") is None
    full = REDACTOR.content(text, "full")
    assert full is not None and "ana@example.com" in full and "sk-abcdefghijklmnop" not in full  # keys never
    assert REDACTOR.content(text, "mask") == "I am [email], card [card], key [redacted]."
    hashed = REDACTOR.content(text, "hash")
    assert hashed is not None and re.fullmatch(
        r"I am \[email#[a-p]{16}\], card \[card#[a-p]{16}\], key \[redacted\]\.", hashed
    )
    assert REDACTOR.content("ana@example.com", "hash") == REDACTOR.content("again ana@example.com", "hash")[6:]  # type: ignore[index]
    other_key = Redactor(list(MASKERS.values()), hash_key=b"x" * 32)
    assert other_key.content("ana@example.com", "hash") != REDACTOR.content("ana@example.com", "hash")


def test_configured_secrets_are_scrubbed_by_value_under_every_policy() -> None:
    SECRETS.use("test-redaction", ["a3f9c2e81b7d4f6a"])  # a provider key of no known shape
    try:
        for policy in ("full", "mask", "hash"):
            assert "a3f9c2e81b7d4f6a" not in (REDACTOR.content("upstream said a3f9c2e81b7d4f6a", policy) or "")
    finally:
        SECRETS.use("test-redaction", [])


def test_identifiers_are_hashed_unless_full() -> None:
    assert REDACTOR.identifier("ana@example.com", "full") == "ana@example.com"
    hashed = REDACTOR.identifier("ana@example.com", "mask")
    assert hashed.startswith("[email#") and hashed == REDACTOR.identifier("ana@example.com", "none")
    assert REDACTOR.identifier("user-42", "mask") == "user-42"


def test_extra_maskers_load_by_import_path() -> None:
    chosen = maskers.load(["email", "card"], ["test_tracing_redaction:EMPLOYEE"])
    assert [masker.name for masker in chosen] == ["email", "card", "employee"]
    with pytest.raises(ValueError, match="unknown masker"):
        maskers.load(["passport"])
    with pytest.raises(ValueError, match="is not a"):
        maskers.load([], ["gateway.tracing.maskers:DEFAULT_ORDER"])
    custom = Redactor(chosen)
    assert custom.content("EMP-12345 ana@example.com", "mask") == "[employee] [email]"


MESSAGES = [
    {"role": "system", "content": "You help customers. Escalate to ops@example.com."},
    {"role": "user", "content": "My card is 4111 1111 1111 1111, call +1 (415) 555-0134."},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "refund", "arguments": '{"card": "5500-0000-0000-0004", "note": "sk-proj-abcdefghijklmnop1234"}'}}]},
]


def test_structures_are_redacted_string_by_string_as_their_json_text_would_be() -> None:
    redactor = Redactor(list(MASKERS.values()), hash_key=b"k" * 32)
    for policy in ("full", "mask", "hash"):
        whole = REDACTOR.content(orjson.dumps(MESSAGES).decode(), policy)
        assert orjson.dumps(redactor.structure(MESSAGES, policy)).decode() == whole, policy
    assert redactor.structure(MESSAGES, "none") is None
    # Keys and long integers too: a body of unknown shape is traced as it came.
    odd = {"ana@example.com": [4111111111111111, 42, 3.5, True, None], "n": 4111111111111112}
    assert redactor.structure(odd, "mask") == {"[email]": ["[card]", 42, 3.5, True, None], "n": 4111111111111112}


def _counting_redactor() -> tuple[Redactor, list[str]]:
    seen: list[str] = []

    def valid(found: str) -> bool:
        seen.append(found)
        return True

    return Redactor([Masker("word", re.compile(r"secretword\d"), valid)], hash_key=b"k" * 32), seen


def test_a_text_seen_before_is_not_redacted_again() -> None:
    redactor, seen = _counting_redactor()
    first = redactor.structure(["a secretword1", "a secretword1"], "mask")
    assert first == ["a [word]", "a [word]"] and seen == ["secretword1"]
    assert redactor.structure({"content": "a secretword1"}, "hash") != {"content": "a [word]"}  # per policy
    assert len(seen) == 2
    assert redactor.structure(["a secretword1"], "mask") == ["a [word]"] and len(seen) == 2


def test_a_secret_that_becomes_known_empties_the_cache() -> None:
    redactor, _ = _counting_redactor()
    text = "upstream said b7e2d4c9a1f3e5d8"  # no known shape: only its value says it is a key
    assert redactor.structure([text], "full") == [text]
    SECRETS.use("test-redaction-cache", ["b7e2d4c9a1f3e5d8"])
    try:
        assert redactor.structure([text], "full") == ["upstream said [redacted]"]
    finally:
        SECRETS.use("test-redaction-cache", [])


def test_the_cache_is_bounded() -> None:
    from gateway.tracing import redaction

    redactor, seen = _counting_redactor()
    for n in range(redaction.CACHE_MAX_ENTRIES + 10):
        redactor.structure([f"text {n} secretword1"], "mask")
    assert sum(len(cache) for cache in redactor._cache.values()) <= redaction.CACHE_MAX_ENTRIES
    long = "x" * redaction.CACHE_MAX_TEXT + " secretword2"
    before = len(seen)
    assert redactor.structure([long, long], "mask") == [long[:-12] + " [word]"] * 2
    assert len(seen) == before + 2  # too long to keep: redacted each time
    assert redactor._cached_chars <= redaction.CACHE_MAX_CHARS + 2 * redaction.CACHE_MAX_TEXT


def _plain_luhn(text: str) -> bool:
    try:
        digits = [int(c) for c in text if c.isdigit()]
    except ValueError:
        return False
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _plain_phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    if not 7 <= digits <= 15 or re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return False
    separators = {c for c in text if not c.isdigit()}
    return separators != {"."} or text.count(".") > 1


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 -.()+٤٢²"), min_size=1, max_size=30))
def test_the_card_and_phone_checks_agree_with_their_plain_forms(text: str) -> None:
    """The checks run as string operations in C; written as loops over the characters, they
    say the same for every candidate, digits of other scripts included."""
    from gateway.tracing.maskers.phone import phone_valid

    candidate = text.replace(".", "").replace("(", "").replace(")", "").replace("+", "")
    assert luhn_valid(candidate) == _plain_luhn(candidate)
    assert phone_valid(text) == _plain_phone(text)


def _ctx(team: str | None, alias: str) -> RequestContext:
    catalog = stage_catalog("t", {})
    ctx = RequestContext(request_id="r", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=catalog)
    if team is not None:
        ctx.principal = Principal(key_id="k", team=team, roles=frozenset({"app"}))
    ctx.requested_model = alias
    return ctx


def test_policies_per_team_and_alias() -> None:
    ctx = _ctx("t", "bench")
    spec = TeamSpec.model_validate(
        {
            "tracing": {
                "sample_rate": 0.5,
                "content": "mask",
                "aliases": {"gpt-*": {"sample_rate": 0.0, "content": "none"}},
            }
        }
    )
    ctx.catalog.teams["t"] = Team("t", spec)
    policies = TracePolicies(TracePolicy(1.0, "full"))
    assert policies.of(ctx) == TracePolicy(0.5, "mask")
    ctx.requested_model = "gpt-4o"
    assert policies.of(ctx) == TracePolicy(0.0, "none")
    assert policies.of(_ctx(None, "bench")) == TracePolicy(1.0, "full")  # no team: the default
    ctx.catalog.teams["t"] = Team("t", TeamSpec())  # a new catalog's team: its own answer
    assert policies.of(ctx) == TracePolicy(1.0, "full")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        ),
        (
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-00",
            ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        ),
        (
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",
            ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        ),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", None),
        ("garbage", None),
    ],
)
def test_traceparent(header: str, expected: tuple[str, str] | None) -> None:
    assert parse_traceparent(header) == expected


# The maskers' patterns are written for re's fast scan (boundary checks after the first
# character, see gateway/tracing/maskers); these are the plain forms they must agree with.
PLAIN_FORMS = {
    "card": r"(?<![\w.])\d(?:[ \-]?\d){12,18}(?![\w])",
    "phone": r"(?<![\w+.\-])(?:\+|\(\+?)?\d[\d ().\-]{5,22}\d(?![\w])",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
}
# Pieces the text is made of: digit runs (so card- and phone-long runs are common), separators,
# letters on both sides of \w (a non-ASCII digit and letter among them), what IBANs and IPs
# are made of.
_MASKER_PIECES = ["4111", "1111", "12345", "7", "0", "٣", " ", "-", ".", "+", "(", "(+", ")", ":", "::", "_", "\n", "@",
                  "DE", "GB", "89", "X", "é", "a", "fe80", "f"]


@settings(max_examples=3000, deadline=None)
@given(text=st.lists(st.sampled_from(_MASKER_PIECES), max_size=16).map("".join))
def test_fast_masker_patterns_find_what_their_plain_forms_find(text: str) -> None:
    for name, plain in PLAIN_FORMS.items():
        fast = MASKERS[name].pattern
        assert [m.span() for m in fast.finditer(text)] == [m.span() for m in re.finditer(plain, text)], name
    ip = MASKERS["ip"]
    if ip.pattern.search(text) is not None:
        assert ip.prefilter is not None and ip.prefilter.search(text) is not None


@pytest.mark.parametrize("text", ["10.0.0.1", "fe80::1", "::1", "2001:db8::2:1", "a 192.168.1.20.", "x ::ffff:1"])
def test_the_ip_prefilter_passes_every_address(text: str) -> None:
    assert MASKERS["ip"].sub(text, lambda kind, _value: f"[{kind}]") != text


#: Configured secrets JSON writes differently inside a string: a quote, a backslash, a newline,
#: a tab and a non-ASCII letter (a database password may hold any of them).
ODD_SECRETS = ['pa"ss\\word\n42', "tab\tsecret-99", "clé-secrète-7"]


def _full_both_ways(value: object) -> tuple[str | None, str]:
    """The input as a span carries it under ``full`` (the whole-text check first), and as
    redacting it string by string gives it."""
    from gateway.tracing.spans import _content

    redactor = Redactor(list(MASKERS.values()), hash_key=b"k" * 32)
    return _content(redactor, value, "full"), orjson.dumps(redactor.structure(value, "full")).decode()


@pytest.mark.parametrize("value", [
    [{"role": "user", "content": "plain question 12"}],
    [{"role": "user", "content": f"the password is {ODD_SECRETS[0]}!"}],
    {"tab\tsecret-99": ["clé-secrète-7", 1]},
    [{"role": "user", "content": "Authorization: Bearer\nabcdefghijkl"}],
    [{"role": "user", "content": "key sk-proj-abcdefghijklmnop1234"}],
    [{"role": "tool", "content": "gw-abcdefghijkl"}, 12345678901234],
    {"n": 123456789012},
])
def test_under_full_a_text_is_sent_whole_only_when_scrubbing_its_strings_would_change_nothing(value: object) -> None:
    SECRETS.use("test-redaction-json", [*ODD_SECRETS, "123456789"])
    try:
        fast, slow = _full_both_ways(value)
    finally:
        SECRETS.use("test-redaction-json", [])
    assert fast == slow
    for secret in [*ODD_SECRETS, "123456789", "abcdefghijkl", "sk-proj-abcdefghijklmnop1234"]:
        assert orjson.dumps(secret).decode()[1:-1] not in fast  # not even as JSON escapes it


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.text(alphabet=st.sampled_from(list('ab sk-gw_Bearer"\\\n\tcé0123456789')), max_size=30)
    | st.integers(min_value=-(10**13), max_value=10**13),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
))
def test_the_whole_text_check_agrees_with_string_by_string_scrubbing(value: object) -> None:
    SECRETS.use("test-redaction-json", ['s"k\\9\nab', "cé0123"])
    try:
        fast, slow = _full_both_ways(value)
    finally:
        SECRETS.use("test-redaction-json", [])
    assert fast == slow


def test_identifiers_are_remembered_until_a_secret_becomes_known() -> None:
    redactor = Redactor(list(MASKERS.values()), hash_key=b"k" * 32)
    user = "ana@example.com c4d8e2f6a9b1"
    first = redactor.identifier(user, "mask")
    assert "ana@example.com" not in first
    assert redactor.identifier(user, "hash") == first  # hashed alike under mask and hash
    SECRETS.use("test-redaction-ids", ["c4d8e2f6a9b1"])
    try:
        assert redactor.identifier(user, "mask") == first.replace("c4d8e2f6a9b1", "[redacted]")
    finally:
        SECRETS.use("test-redaction-ids", [])
