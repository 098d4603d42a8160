"""Hostile bodies and templates cost the gateway a bounded time and memory, and never stall it.

Each of these once froze or bloated the process: a constant folded at compile time
(``3 ** 3 ** 16``: 45 s before the role check answered 403), ``'a' * 10**9`` (1.2 GiB), a
774-byte YAML alias bomb (46 s, 4 GiB), an author's nested loops over a caller's ``n`` (6 s
of a stalled event loop), ``lipsum(n=100000)``, unauthenticated 200 MB bodies read whole,
and cross-site sign-ins to the finance page. While each is handled, ``/health/live`` and a
``/v1`` call must keep answering within 50 ms.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from support.gateway_proc import ADMIN_KEY, GatewayProcess

STALL_BOUND_S = 0.050  # the bound for /health/live and a /v1 call while hostile input is handled
BASELINE_S = 0.5  # probing before the hostile request, to learn what this machine's noise alone costs
ATTEMPTS = 3  # a stall must come back with the same input to be the input's (``while_probed``)

pytestmark = pytest.mark.alone  # the 50 ms bound is wall-clock: no other xdist worker runs meanwhile


class Prober:
    """Calls ``/health/live`` and a ``/v1`` mock completion in a loop; keeps the slowest of each."""

    def __init__(self, gateway: GatewayProcess, key: str) -> None:
        self.gateway = gateway
        self.key = key
        self.worst = {"live": 0.0, "v1": 0.0}
        self.baseline = {"live": 0.0, "v1": 0.0}  # the worst before the hostile request began
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.gateway.url, timeout=30) as client:
            client.get("/health/live")  # connections warm before measuring
            while not self._stop.is_set():
                for name, call in (("live", lambda: client.get("/health/live")),
                                   ("v1", lambda: client.post(
                                       "/v1/chat/completions", headers={"authorization": f"Bearer {self.key}"},
                                       json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]}))):
                    started = time.perf_counter()
                    assert call().status_code == 200
                    self.worst[name] = max(self.worst[name], time.perf_counter() - started)
                self.count += 1
                time.sleep(0.005)

    def __enter__(self) -> Prober:
        self._thread.start()
        time.sleep(BASELINE_S)
        # A shared CI machine stalls everything now and then; what the hostile request may add is
        # measured above that floor, so the check holds the gateway, not the machine, to 50 ms.
        self.baseline = dict(self.worst)
        self.worst = {"live": 0.0, "v1": 0.0}
        self.count = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        time.sleep(0.05)
        self._stop.set()
        self._thread.join(10)


def while_probed(gateway: GatewayProcess, key: str, action: Callable[[], httpx.Response], *,
                 within_s: float) -> httpx.Response:
    """Run ``action`` while the prober watches; assert it answered within ``within_s`` and the
    gateway kept answering other callers promptly meanwhile.

    A stall the hostile input causes comes back every time the input is sent. One that does not
    (a full garbage collection of the long-lived heap a suite-shared gateway has built up, ~30-120
    ms on a loaded CI machine; the machine itself) is not the input's: so a stall is confirmed by
    sending the same input again, up to ``ATTEMPTS`` times in all, and only one seen on every
    attempt fails the test. Every attempt's figures are in the failure message.
    """
    seen: list[dict[str, Any]] = []
    for _ in range(ATTEMPTS):
        before = gc_seconds(gateway)
        with Prober(gateway, key) as prober:
            started = time.perf_counter()
            response = action()
            took = time.perf_counter() - started
        assert took < within_s, f"the hostile request took {took:.2f} s"
        assert prober.count >= 3, "the probes ran alongside the hostile request"
        after = gc_seconds(gateway)
        seen.append({"worst": prober.worst, "baseline": prober.baseline,
                     "gc_seconds": {g: round(after[g] - before.get(g, 0.0), 3) for g in after}})
        if all(prober.worst[name] < STALL_BOUND_S + prober.baseline[name] for name in ("live", "v1")):
            return response
    raise AssertionError(f"stalled on each of {ATTEMPTS} attempts: {seen}")


def gc_seconds(gateway: GatewayProcess) -> dict[str, float]:
    """The gateway's time in garbage collection so far, by generation (for a failure's message)."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    return {match[0]: float(match[1]) for match in re.findall(
        r'^gateway_gc_pause_seconds_sum\{generation="(\d)"\} (\S+)$', text, re.MULTILINE)}


@pytest.fixture(scope="module")
def keys(gateway: GatewayProcess) -> dict[str, str]:
    # The admin app is built on the first admin request (on the event loop, ~0.5 s), and the
    # prompt service on the first prompt push: build both now, so the probes measure the hostile
    # input and not those one-offs. (Seen in the full suite, fresh clones: the first push, a
    # plain 403, held a /v1 call 0.64-0.69 s on a gateway shared with earlier tests.)
    httpx.get(f"{gateway.url}/admin/budgets", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    keys = {"app": gateway.create_key("alpha", "app"), "author": gateway.create_key("alpha", "author")}
    assert push(gateway, keys["app"], prompt("warm-up")).status_code == 403
    return keys


def push(gateway: GatewayProcess, key: str, source: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{gateway.url}/admin/prompts", headers={"authorization": f"Bearer {key}"},
                      json={"source": source, "message": "hostile"}, timeout=timeout)


def prompt(content: str, *, golden: str = "", name: str | None = None) -> str:
    name = name or f"hostile-{secrets.token_hex(4)}"
    return (f"name: {name}\nmodel: mock\nvariables:\n  type: object\n  properties:\n    n: {{type: integer}}\n"
            f"messages:\n  - role: user\n    content: {content!r}\n{golden}")


CONSTANT_FOLD = "{{ (3 ** (3 ** 16)) % 10 }}"
HUGE_STRING = "{{ ('a' * 10**9) }}"
NESTED_LOOPS = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}done"


def test_a_push_without_the_author_role_is_refused_before_its_templates_run(
    gateway: GatewayProcess, keys: dict[str, str]
) -> None:
    response = while_probed(gateway, keys["app"], lambda: push(gateway, keys["app"], prompt(CONSTANT_FOLD)),
                            within_s=5)
    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_role"


@pytest.mark.parametrize("content", [CONSTANT_FOLD, HUGE_STRING, "{{ lipsum(n=100000) }}",
                                     "{{ '%999999999d' | format(1) }}", "{{ 'x' | center(10**9) }}"])
def test_an_authors_hostile_template_is_refused_in_bounded_time(
    gateway: GatewayProcess, keys: dict[str, str], content: str
) -> None:
    source = prompt(content, golden="golden:\n  - {name: g, variables: {n: 1}, expect: {contains: x}}\n")
    response = while_probed(gateway, keys["app"], lambda: push(gateway, keys["author"], source), within_s=10)
    assert response.status_code == 400, response.text
    assert "render limit" in response.text


def test_a_yaml_alias_bomb_is_refused_at_once(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)
    ]
    bomb = "name: bomb\nmodel: mock\nmessages: [{role: user, content: hi}]\n" + "\n".join(levels) + "\n"
    response = while_probed(gateway, keys["app"], lambda: push(gateway, keys["author"], bomb), within_s=5)
    assert response.status_code == 400 and "aliases are not allowed" in response.text


def test_a_runaway_render_on_the_request_path_is_a_400_and_stalls_nothing(
    gateway: GatewayProcess, keys: dict[str, str]
) -> None:
    name = f"loops-{secrets.token_hex(4)}"
    assert push(gateway, keys["author"], prompt(NESTED_LOOPS, name=name)).status_code == 201

    def call(n: int) -> httpx.Response:
        return httpx.post(f"{gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {keys['app']}"},
                          json={"model": f"prompt:{name}@latest", "variables": {"n": n}}, timeout=30)

    assert call(3).status_code == 200  # a sane n renders
    # within 2 s: the 100 ms default budget, not 6 s
    response = while_probed(gateway, keys["app"], lambda: call(15000), within_s=2)
    assert response.status_code == 400 and response.json()["error"]["code"] == "prompt_render_failed"


def chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


def test_an_unauthenticated_huge_body_is_refused_before_it_is_read(gateway: GatewayProcess) -> None:
    started = time.perf_counter()
    response = httpx.post(f"{gateway.url}/admin/prompts", content=chunks(200 << 20), timeout=30)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("path", ["/admin/prompts", "/admin/keys", "/reports/login"])
def test_every_body_has_a_limit_enforced_while_reading(gateway: GatewayProcess, path: str) -> None:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    started = time.perf_counter()
    response = httpx.post(f"{gateway.url}{path}", content=chunks(200 << 20), headers=headers, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("path", ["/reports/login", "/reports/logout"])
@pytest.mark.parametrize(("header", "value"), [("origin", "https://evil.example"), ("origin", "null"),
                                               ("referer", "https://evil.example/page")])
def test_cross_site_sign_in_and_out_are_refused(gateway: GatewayProcess, path: str, header: str, value: str) -> None:
    response = httpx.post(f"{gateway.url}{path}", data={"key": ADMIN_KEY}, headers={header: value}, timeout=30)
    assert response.status_code == 403 and response.json()["error"]["code"] == "cross_site_request"
    assert "set-cookie" not in response.headers


def test_a_same_site_sign_in_still_works(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.url}/reports/login", data={"key": ADMIN_KEY},
                          headers={"origin": gateway.url}, timeout=30)
    assert response.status_code in (200, 303) and "set-cookie" in response.headers
