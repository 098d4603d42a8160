"""YAML files with ``${ENV}`` interpolation and line numbers for validation errors.

Config and policy files are read once, here. Interpolation runs on parsed string scalars,
not on the raw text, so an environment value holding ``:`` or ``#`` can never change the
file's structure. Each value's line is remembered so that a pydantic error such as
``aliases.gpt-4o.deployments.0.timeout_s`` is reported as ``policies/models.yaml:14``.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(Exception):
    """A config or policy file that cannot be used; the message names file, line and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class LoadedYaml:
    path: Path
    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)
    # Where a value came from the environment: its location -> the variables it was built from.
    env_sources: dict[tuple[str | int, ...], list[str]] = field(default_factory=dict)

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        # Walk up the location until a node with a known line is found (a missing field
        # is reported at its parent mapping).
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset ``${VAR}`` becomes ``""``."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = env.get(name)
        if found is None or (found == "" and default is not None):
            return default if default is not None else ""
        return found

    return _ENV_PATTERN.sub(replace, value)


def _convert(
    node: yaml.Node,
    loc: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    constructor: yaml.constructor.SafeConstructor,
    env: Mapping[str, str],
    sources: dict[tuple[str | int, ...], list[str]],
) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            result[key] = _convert(value_node, (*loc, key), lines, constructor, env, sources)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), lines, constructor, env, sources) for i, item in enumerate(node.value)]
    value = constructor.construct_object(node, deep=True)
    if isinstance(value, str) and "${" in value:
        sources[loc] = [match.group(1) for match in _ENV_PATTERN.finditer(value)]
        return interpolate(value, env)
    return value


def load_yaml(path: Path, env: Mapping[str, str] | None = None) -> LoadedYaml:
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    lines: dict[tuple[str | int, ...], int] = {}
    if node is None:
        return LoadedYaml(path, {}, lines)
    constructor = yaml.SafeLoader("")
    sources: dict[tuple[str | int, ...], list[str]] = {}
    data = _convert(node, (), lines, constructor, env, sources)
    return LoadedYaml(path, data, lines, sources)


def validate(model: type[ModelT], loaded: LoadedYaml) -> ModelT:
    """Validate a loaded file, turning pydantic's errors into ``file:line: field: problem``."""
    try:
        return model.model_validate(loaded.data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = loaded.line_of(loc)
            where = f"{loaded.path}:{line}" if line else str(loaded.path)
            field_name = ".".join(str(part) for part in loc) or "(top level)"
            message = err["msg"]
            if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
                close = difflib.get_close_matches(loc[-1], _fields_at(model, loc[:-1]), n=1)
                if close:
                    message += f" (did you mean '{close[0]}'?)"
            variables = loaded.env_sources.get(loc)
            if variables:
                message += " (the value came from " + ", ".join(f"${{{name}}}" for name in variables) + ")"
            problems.append(f"{where}: {field_name}: {message}")
        raise ConfigError(problems) from None


def _fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The field names of the model found at ``loc`` inside ``model`` (mapping keys and list
    indexes step into the value type); [] where the walk cannot follow."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
            continue
        args = typing.get_args(current)
        if not args:
            return []
        current = args[-1]  # dict[str, X] -> X; list[X] -> X
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation
