"""Prompt templates: compiled once per version, rendered in Jinja2's immutable sandbox.

Templates are authored by people, not callers, but they run on caller-supplied variables,
so they render in ``ImmutableSandboxedEnvironment``: no attribute access to internals, no
mutation of the variables passed in. ``StrictUndefined`` turns a misspelt or missing
variable into an error instead of an empty string silently sent to a model.

``trim_blocks``/``lstrip_blocks`` are on so a ``{% for %}`` over retrieved passages does not
leave blank lines behind; this is part of the format and documented for authors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.prompts.errors import RenderError

_DICT_ATTRIBUTES = frozenset(dir(dict))


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with a shortcut for the most common lookup in prompts: ``passage.title``.

    Jinja resolves ``obj.name`` as ``getattr(obj, "name")`` first and ``obj["name"]`` second; on
    a plain JSON object from the caller the first always fails, and raising that AttributeError
    is a fifth of a typical render. Looking the key up first gives the same result for every
    name that is not a ``dict`` method (those still go the sandbox's way).
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


_ENV = _PromptEnvironment(
    undefined=StrictUndefined,
    autoescape=False,  # prompts are text for a model, not HTML
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)


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

    def render(self, variables: Mapping[str, Any]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        for index, (role, part) in enumerate(zip(self.roles, self.parts, strict=True)):
            if isinstance(part, str):
                messages.append({"role": role, "content": part})
                continue
            try:
                content = part.render(variables)
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
