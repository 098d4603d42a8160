"""Prompt templates: compiled once per version, rendered in Jinja2's immutable sandbox, bounded.

Templates are authored by people, not callers, but they run on caller-supplied variables,
so they render in ``ImmutableSandboxedEnvironment``: no attribute access to internals, no
mutation of the variables passed in. ``StrictUndefined`` turns a misspelt or missing
variable into an error instead of an empty string silently sent to a model.

``trim_blocks``/``lstrip_blocks`` are on so a ``{% for %}`` over retrieved passages does not
leave blank lines behind; this is part of the format and documented for authors.

**Bounds.** No template, whatever its author or its variables, may take more than a bounded
time or memory (``RenderLimits``): a template is Python code in all but name, and one with nested
loops over a caller's ``n`` once stalled the event loop for seconds. So:

- every ``{% for %}`` iterates through ``_counted``, which charges each step to the render's
  budget and checks its deadline (the parsed template is rewritten before compilation);
- ``**``, ``*``, ``+`` and ``~`` go through checks that refuse results past the size limits
  (big integers, ``'a' * 10**9``), and, being intercepted, are never folded into constants at
  compile time (where ``3 ** 3 ** 16`` once ran for 45 s before any role was checked);
- the filters and globals that build large strings from a number (``center``, ``indent``,
  ``format``, ``wordwrap``, ``lipsum``, ...) are wrapped to check their result's size, or
  their arguments' where the work happens before a result exists;
- output is generated piece by piece and refused past ``max_output_chars``.

A render that breaks a bound raises ``RenderError`` (a 400 ``prompt_render_failed`` for that
request only). The defaults (``prompts.render_timeout_ms`` and ``prompts.render_max_output_chars``
in ``gateway.yaml``) are far above any real prompt.
"""

from __future__ import annotations

import operator
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from gateway.prompts.errors import RenderError
from gateway.prompts.limits import RenderLimits

_DICT_ATTRIBUTES = frozenset(dir(dict))


DEFAULT_LIMITS = RenderLimits()


class RenderLimitExceeded(Exception):
    """A render went past one of its ``RenderLimits``."""


class RenderTimeout(RenderLimitExceeded):
    """A render ran past its deadline."""


class _Budget:
    __slots__ = ("deadline", "limits", "started", "steps")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        # CPU time of the rendering thread, not wall time: a render descheduled on a busy
        # machine has not spent its budget (wall time failed real prompts under load).
        # Read lazily: reading a thread's CPU clock is a system call, and a typical render ends
        # before its first check (64 pieces, 256 loop steps). Wall time until then stands in
        # for the CPU time spent, which it can only exceed: the bound is never looser.
        self.started = time.perf_counter()
        self.deadline = 0.0
        self.steps = 0

    def check_time(self) -> None:
        now = time.thread_time()
        if not self.deadline:
            self.deadline = now - (time.perf_counter() - self.started) + self.limits.timeout_s
        if now > self.deadline:
            raise RenderTimeout(f"used more than {self.limits.timeout_s * 1000:.0f} ms of CPU")


# The render in progress on this thread (renders run inline or on worker threads; each is
# synchronous from start to end, so one slot a thread is enough).
_current = threading.local()


def _budget() -> _Budget:
    budget: _Budget | None = getattr(_current, "budget", None)
    if budget is None:  # rendered outside ``render``/``bounded`` (a test): default bounds
        budget = _current.budget = _Budget(DEFAULT_LIMITS)
    return budget


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every ``{% for %}`` iterates through this: each step is charged to the render's budget."""
    budget = _budget()
    for item in iterable:
        budget.steps += 1
        if budget.steps > budget.limits.max_loop_steps:
            raise RenderLimitExceeded(f"ran more than {budget.limits.max_loop_steps} loop steps")
        if not budget.steps & 255:
            budget.check_time()
        yield item


def _sized(value: Any) -> Any:
    """``value`` if it is within the size limits, else ``RenderLimitExceeded``."""
    limits = _budget().limits
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > limits.max_int_bits:
        raise RenderLimitExceeded(f"an integer larger than {limits.max_int_bits} bits")
    if isinstance(value, str | list | tuple | bytes) and len(value) > limits.max_output_chars:
        raise RenderLimitExceeded(f"a value longer than {limits.max_output_chars}")
    return value


# A field width or precision of a million or more in a format string ('%999999999d',
# '{:>999999999}'): Python allocates the padding before any result exists to check.
_HUGE_FORMAT_WIDTH = re.compile(r"\d{7,}")


def _check_format(template: Any) -> None:
    if isinstance(template, str) and _HUGE_FORMAT_WIDTH.search(template):
        raise RenderLimitExceeded("a format width of a million or more")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | bytes) else 0


def _bounded_binop(op: str, left: Any, right: Any) -> Any:
    """Refuse, before doing the work, operations whose result would be past the size limits."""
    limits = _budget().limits
    if op == "**" and isinstance(left, int) and isinstance(right, int):
        if right > 0 and abs(left) > 1 and abs(left).bit_length() * right > limits.max_int_bits:
            raise RenderLimitExceeded(f"an integer larger than {limits.max_int_bits} bits")
    elif op == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > limits.max_int_bits:
                raise RenderLimitExceeded(f"an integer larger than {limits.max_int_bits} bits")
        else:
            count = right if isinstance(right, int) else left if isinstance(left, int) else 0
            if count > 0 and max(_length(left), _length(right)) * count > limits.max_output_chars:
                raise RenderLimitExceeded(f"a value longer than {limits.max_output_chars}")
    elif op == "%":
        _check_format(left)
    elif op == "+" and _length(left) + _length(right) > limits.max_output_chars:
        raise RenderLimitExceeded(f"a value longer than {limits.max_output_chars}")
    return _sized(_BINOPS[op](left, right))


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "**": operator.pow, "%": operator.mod,
}


def _concat(*values: Any) -> str:
    """``a ~ b``: refused past the output limit (doubling ``s ~ s`` in a loop grows fast)."""
    text = "".join(str(value) for value in values)
    return _sized(text)  # type: ignore[no-any-return]


class _Bounding(NodeTransformer):
    """Rewrites a parsed template so loops and concatenations go through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name("_gw_counted", "load"), [node.iter], [], None, None)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.Name("_gw_concat", "load"), list(node.nodes), [], None, None)


def _sized_result(function: Callable[..., Any]) -> Callable[..., Any]:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if args:
            _check_format(args[0])  # the `format` filter's template (harmless for the others)
        for value in (*args[1:], *kwargs.values()):  # a width or count argument: bound it first
            if isinstance(value, int) and not isinstance(value, bool) and value > _budget().limits.max_output_chars:
                raise RenderLimitExceeded(f"an argument larger than {_budget().limits.max_output_chars}")
        return _sized(function(*args, **kwargs))

    bounded.__name__ = getattr(function, "__name__", "filter")
    return bounded


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's ``lipsum``, at most 100 paragraphs of at most 1,000 words (it once took 5 s)."""
    if not (isinstance(n, int) and 0 <= n <= 100 and isinstance(max, int) and max <= 1000):
        raise RenderLimitExceeded("lipsum past 100 paragraphs or 1,000 words each")
    from jinja2.utils import generate_lorem_ipsum

    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))


# Filters that build a value from a number (a width, a count): bounded before and after.
_SIZED_FILTERS = ("center", "indent", "wordwrap", "truncate", "format", "batch", "slice", "join", "replace",
                  "filesizeformat", "list", "string", "pprint", "tojson", "urlize", "xmlattr", "sum", "map")


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with a shortcut for the most common lookup in prompts: ``passage.title``.

    Jinja resolves ``obj.name`` as ``getattr(obj, "name")`` first and ``obj["name"]`` second; on
    a plain JSON object from the caller the first always fails, and raising that AttributeError
    is a fifth of a typical render. Looking the key up first gives the same result for every
    name that is not a ``dict`` method (those still go the sandbox's way).
    """

    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            _check_format(obj)  # '{:>999999999}'.format(1) allocates before any result exists
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return _bounded_binop(operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # Method calls on values (``'a'.center(10**9)``, ``'{:>999999999}'.format(1)``) are
        # bounded like the filters: no integer argument past the output limit, no huge result.
        limit = _budget().limits.max_output_chars
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise RenderLimitExceeded(f"an argument larger than {limit}")
        return _sized(super().call(__context, __obj, *args, **kwargs))

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Jinja's parse step, rewritten before compilation (see the module docstring); a
        # private hook, pinned by tests/test_prompt_render_bounds.py.
        return _Bounding().visit(super()._parse(source, name, filename))  # type: ignore[no-any-return]


_ENV = _PromptEnvironment(
    undefined=StrictUndefined,
    autoescape=False,  # prompts are text for a model, not HTML
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)
for _name in _SIZED_FILTERS:
    if _name in _ENV.filters:
        _ENV.filters[_name] = _sized_result(_ENV.filters[_name])
_ENV.globals["lipsum"] = _bounded_lipsum
_ENV.globals["_gw_counted"] = _counted
_ENV.globals["_gw_concat"] = _concat


class TemplateProblem(Exception):
    """A template that does not parse; ``line`` is 1-based within the template."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line




def variables_used(source: str) -> set[str]:
    """The top-level variable names a template reads; raises ``TemplateProblem`` on bad syntax."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or str(exc), exc.lineno) from None
    return set(meta.find_undeclared_variables(ast))


@dataclass(frozen=True, slots=True)
class CompiledPrompt:
    """A version's message templates, compiled; ``render`` is what a request pays for.

    A message without any Jinja syntax is kept as its text: it renders the same every time.
    """

    roles: tuple[str, ...]
    parts: tuple[str | jinja2.Template, ...]

    @property
    def is_static(self) -> bool:
        """No template at all: rendering costs nothing and cannot fail."""
        return all(isinstance(part, str) for part in self.parts)

    def render(self, variables: Mapping[str, Any], limits: RenderLimits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
        """The messages, within ``limits`` (one budget for all of them); ``RenderError`` otherwise."""
        previous = getattr(_current, "budget", None)
        _current.budget = budget = _Budget(limits)
        try:
            return self._render(variables, budget)
        finally:
            _current.budget = previous

    def _render(self, variables: Mapping[str, Any], budget: _Budget) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        written = 0
        for index, (role, part) in enumerate(zip(self.roles, self.parts, strict=True)):
            if isinstance(part, str):
                messages.append({"role": role, "content": part})
                continue
            try:
                pieces: list[str] = []
                for piece in part.generate(variables):
                    written += len(piece)
                    if written > budget.limits.max_output_chars:
                        raise RenderLimitExceeded(f"wrote more than {budget.limits.max_output_chars} characters")
                    pieces.append(piece)
                    if not len(pieces) & 63:
                        budget.check_time()  # a CPU-clock read is a syscall: not for every piece
                content = "".join(pieces)
            except RenderLimitExceeded as exc:
                raise RenderError(index, f"the template went past a render limit ({exc})",
                                  timed_out=isinstance(exc, RenderTimeout)) from None
            except MemoryError:
                raise RenderError(index, "the template ran out of memory") from None
            except jinja2.UndefinedError as exc:
                raise RenderError(index, f"undefined value: {exc.message}") from None
            except jinja2.TemplateError as exc:
                raise RenderError(index, exc.message or type(exc).__name__) from None
            except Exception as exc:
                # Template code is the author's code: a filter or an arithmetic error on a
                # caller's value is that template failing, not the gateway.
                raise RenderError(index, f"{type(exc).__name__}: {exc}") from None
            messages.append({"role": role, "content": content})
        return messages


def _has_syntax(source: str) -> bool:
    return "{{" in source or "{%" in source or "{#" in source


def compile_prompt(messages: Sequence[tuple[str, str]]) -> CompiledPrompt:
    """Compile ``(role, template)`` pairs; raises ``TemplateProblem`` on bad syntax."""
    parts: list[str | jinja2.Template] = []
    for _, source in messages:
        if not _has_syntax(source):
            parts.append(source)
            continue
        try:
            template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(exc.message or str(exc), exc.lineno) from None
        # A template's globals are a ChainMap over the environment's, which every render copies
        # key by key (about half of a small template's render time); a plain snapshot copies
        # fast. Nothing adds globals after start-up, so the snapshot cannot go stale.
        template.globals = dict(template.globals)
        parts.append(template)
    return CompiledPrompt(tuple(role for role, _ in messages), tuple(parts))
