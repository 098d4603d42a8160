"""Prompt source files: the authoring format, its validation, and the canonical content.

A prompt is a YAML file (``prompts/summarise.yaml``) or a folder with a ``prompt.yaml``
(``prompts/support-answer/prompt.yaml``), optionally pointing at a JSONL golden dataset::

    name: support-answer
    type: chat                       # or "text": one template, sent as one user message
    model: mock                      # the model alias it runs on
    parameters: {temperature: 0.2, max_tokens: 400}
    variables:                       # a JSON Schema for the caller's `variables`
      type: object
      required: [question, context]
      properties: {question: {type: string}, context: {type: array}}
    messages:
      - {role: system, content: "Answer from these passages: {% for p in context %}..."}
      - {role: user, content: "{{ question }}"}
    dataset: golden.jsonl            # relative to the file; or `golden:` inline

Validation happens before anything is stored and reports every problem with file and line:
the schema of the file, each template's syntax, every variable a template reads being declared
in the schema, the golden cases' variables against that schema, each case rendering, and each
expectation being a kind the evaluators know. The golden dataset is folded into the version, so
``eval NAME@vN`` always runs the cases that were pushed with ``vN``.

The *canonical content* is the validated document as sorted, compact JSON: the exact bytes that
are hashed (sha256), signed and stored. Formatting and comments do not change it, so pushing
the same prompt again is recognised as the same version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.prompts.errors import RenderError
from gateway.prompts.evals.evaluators import EvaluatorSet
from gateway.prompts.refs import NAME_RE
from gateway.prompts.render import TemplateProblem, compile_prompt, variables_used
from gateway.prompts.signing import content_sha256

FOLDER_FILES = ("prompt.yaml", "prompt.yml")


class SourceError(Exception):
    """A prompt that cannot be pushed; ``problems`` are ``file:line: field: problem`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MessageTemplate(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(..., min_length=1, description="A Jinja2 template.")


class Parameters(_Strict):
    """Request parameters the prompt fixes; callers override only what policy allows."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def as_body(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump(mode="json").items() if value is not None}


class GoldenCase(_Strict):
    name: str = Field("", description="Shown in evaluation reports.")
    variables: dict[str, Any] = Field(default_factory=dict)
    messages: list[dict[str, Any]] = Field(default_factory=list, description="Caller messages after the prompt's.")
    expect: dict[str, Any] = Field(..., min_length=1, description="Expectation kind -> spec.")


class EvaluationSpec(_Strict):
    min_pass_rate: float = Field(1.0, ge=0, le=1, description="Share of golden cases that must pass.")


class PromptSpec(_Strict):
    name: str = Field(..., description="Callers use it as `prompt:NAME`.")
    type: Literal["chat", "text"] = "chat"
    description: str = ""
    owner: str = ""
    tags: list[str] = Field(default_factory=list)
    model: str = Field(..., min_length=1, description="The model alias the prompt runs on.")
    data_class: str | None = Field(
        None, min_length=1, max_length=50,
        description="The data class of what the prompt sends (data_classes.yaml); requests are at least this class.",
    )
    parameters: Parameters = Parameters()
    variables: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the caller's `variables` object.",
    )
    messages: list[MessageTemplate] = Field(default_factory=list)
    template: str | None = Field(None, description="The single template of a `text` prompt.")
    evaluation: EvaluationSpec = EvaluationSpec()
    dataset: str | None = Field(None, description="Path of a JSONL golden dataset, relative to the file.")
    golden: list[GoldenCase] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shape(self) -> PromptSpec:
        if not NAME_RE.match(self.name):
            raise ValueError(
                f"name {self.name!r}: use letters, digits, '.', '_' or '-' (at most 100, starting with a letter "
                "or digit)"
            )
        if self.type == "chat" and (not self.messages or self.template is not None):
            raise ValueError("a chat prompt needs `messages` (and no `template`)")
        if self.type == "text" and (self.messages or not self.template):
            raise ValueError("a text prompt needs `template` (and no `messages`)")
        return self

    def message_templates(self) -> list[tuple[str, str]]:
        if self.type == "text":
            assert self.template is not None
            return [("user", self.template)]
        return [(message.role, message.content) for message in self.messages]


@dataclass(frozen=True, slots=True)
class PromptSource:
    """A validated prompt, ready to store: the canonical content and its hash."""

    spec: PromptSpec
    content: str
    sha256: str
    warnings: tuple[str, ...] = ()


def canonical_content(spec: PromptSpec) -> str:
    """Sorted, compact JSON of the document with its dataset inlined: what is hashed and signed."""
    document = spec.model_dump(mode="json", exclude={"dataset"})
    if document.get("data_class") is None:
        # Left out when unset, so prompts pushed before data classes existed keep their hash.
        document.pop("data_class", None)
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()


def spec_from_content(content: str) -> PromptSpec:
    """The document back from stored canonical content (already validated when it was pushed)."""
    return PromptSpec.model_validate_json(content)


# ------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------


#: Bounds on a prompt file's YAML, checked on the parser's event stream before anything is
#: built: a 774-byte file of nested aliases once expanded to 4 GiB. Aliases are refused outright
#: (a prompt file has no use for them), and the size, node count and depth are capped far
#: above any real prompt.
MAX_YAML_CHARS = 1_000_000
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


def _check_yaml_bounds(text: str, origin: str) -> None:
    if len(text) > MAX_YAML_CHARS:
        raise SourceError([f"{origin}: the file is larger than {MAX_YAML_CHARS} characters"])
    nodes = depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            line = event.start_mark.line + 1
            raise SourceError([f"{origin}:{line}: YAML anchors and aliases are not allowed in prompt files"])
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise SourceError([f"{origin}: more than {MAX_YAML_NODES} YAML nodes"])
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise SourceError([f"{origin}:{event.start_mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels"])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _yaml_with_lines(text: str, origin: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse YAML, remembering each value's line so validation errors can point at it.

    Unlike config files, prompt files get no ``${ENV}`` interpolation: a prompt's text is
    content, and must mean the same on every machine that pushes it.
    """
    try:
        _check_yaml_bounds(text, origin)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark is not None else origin
        raise SourceError([f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    if node is None:
        raise SourceError([f"{origin}: the file is empty"])
    constructor = yaml.SafeLoader("")
    lines: dict[tuple[Any, ...], int] = {}
    problems: list[str] = []

    def convert(node: yaml.Node, loc: tuple[Any, ...]) -> Any:
        lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in result:
                    problems.append(f"{origin}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
                result[key] = convert(value_node, (*loc, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [convert(item, (*loc, index)) for index, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    try:
        data = convert(node, ())
    except yaml.YAMLError as exc:
        raise SourceError([f"{origin}: invalid YAML: {exc}"]) from None
    if problems:
        raise SourceError(problems)
    return data, lines


def _line_of(lines: Mapping[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return None


def _validation_problems(exc: ValidationError, origin: str, lines: Mapping[tuple[Any, ...], int]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = _line_of(lines, loc)
        where = f"{origin}:{line}" if line else origin
        field = ".".join(str(part) for part in loc) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {field}: {message}")
    return problems


def _read_dataset(text: str, origin: str) -> list[GoldenCase]:
    cases: list[GoldenCase] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            problems.append(f"{origin}:{number}: invalid JSON: {exc.msg}")
            continue
        try:
            cases.append(GoldenCase.model_validate(data))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(part) for part in err["loc"]) or "(line)"
                problems.append(f"{origin}:{number}: {field}: {err['msg']}")
    if problems:
        raise SourceError(problems)
    return cases


def parse_source(
    text: str,
    origin: str,
    *,
    base_dir: Path | None = None,
    dataset_text: str | None = None,
    evaluators: EvaluatorSet,
    model_kinds: Mapping[str, str] | None = None,
) -> PromptSource:
    """Validate a prompt document; ``base_dir`` lets ``dataset:`` be read from disk.

    ``dataset_text`` supplies the JSONL directly (the admin API, where no file can be read).
    ``model_kinds`` maps alias names to their kind so a prompt naming an unknown or embedding
    alias is refused at push time; ``None`` skips that check.
    """
    data, lines = _yaml_with_lines(text, origin)
    if not isinstance(data, dict):
        raise SourceError([f"{origin}:1: a prompt file must be a mapping (name:, model:, messages: ...)"])
    try:
        spec = PromptSpec.model_validate(data)
    except ValidationError as exc:
        raise SourceError(_validation_problems(exc, origin, lines)) from None
    golden = list(spec.golden)
    if spec.dataset is not None or dataset_text is not None:
        if dataset_text is None:
            if base_dir is None:
                raise SourceError([f"{origin}: dataset: a file cannot be read here; send the JSONL text instead"])
            dataset_path = base_dir / spec.dataset  # type: ignore[operator]
            try:
                dataset_text = dataset_path.read_text(encoding="utf-8")
            except OSError as exc:
                line = lines.get(("dataset",))
                where = f"{origin}:{line}" if line else origin
                raise SourceError([f"{where}: dataset: cannot read {dataset_path}: {exc.strerror or exc}"]) from None
            dataset_origin = str(dataset_path)
        else:
            dataset_origin = spec.dataset or "dataset"
        golden.extend(_read_dataset(dataset_text, dataset_origin))
    spec = spec.model_copy(update={"dataset": None, "golden": golden})
    warnings = _check(spec, origin, lines, evaluators, model_kinds)
    content = canonical_content(spec)
    return PromptSource(spec=spec, content=content, sha256=content_sha256(content), warnings=tuple(warnings))


def load_source(
    path: Path, *, evaluators: EvaluatorSet, model_kinds: Mapping[str, str] | None = None
) -> PromptSource:
    """Read and validate ``path``: a prompt YAML file, or a folder holding ``prompt.yaml``."""
    if path.is_dir():
        found = next((path / name for name in FOLDER_FILES if (path / name).is_file()), None)
        if found is None:
            raise SourceError([f"{path}: a prompt folder needs a {FOLDER_FILES[0]}"])
        path = found
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise SourceError([f"{path}: not UTF-8 text"]) from None
    return parse_source(text, str(path), base_dir=path.parent, evaluators=evaluators, model_kinds=model_kinds)


# ------------------------------------------------------------------------------------------
# Semantic checks
# ------------------------------------------------------------------------------------------


def _check(
    spec: PromptSpec,
    origin: str,
    lines: Mapping[tuple[Any, ...], int],
    evaluators: EvaluatorSet,
    model_kinds: Mapping[str, str] | None,
) -> list[str]:
    """Raise ``SourceError`` with every problem found; return warnings (not fatal)."""
    problems: list[str] = []
    warnings: list[str] = []

    def at(*loc: Any) -> str:
        line = _line_of(lines, loc)
        return f"{origin}:{line}" if line else origin

    if model_kinds is not None:
        kind = model_kinds.get(spec.model)
        if kind is None:
            problems.append(f"{at('model')}: model: unknown model alias {spec.model!r}")
        elif kind != "chat":
            article = "an" if kind[:1] in "aeiou" else "a"
            problems.append(
                f"{at('model')}: model: {spec.model!r} is {article} {kind} model; prompts need a chat model"
            )

    schema = spec.variables
    validator = None
    try:
        validator_for(schema).check_schema(schema)
        validator = validator_for(schema)(schema)
    except SchemaError as exc:
        problems.append(f"{at('variables')}: variables: not a valid JSON Schema: {exc.message}")
    if schema.get("type") != "object":
        problems.append(f"{at('variables')}: variables: the schema must have `type: object`")
    properties = schema.get("properties") or {}
    declared = set(properties) if isinstance(properties, dict) else set()
    for name in schema.get("required") or []:
        if name not in declared:
            problems.append(f"{at('variables', 'required')}: variables.required: {name!r} is not in properties")

    field = "template" if spec.type == "text" else "messages"
    used: set[str] = set()
    compiled = None
    template_ok = True
    for index, (_, source) in enumerate(spec.message_templates()):
        loc: tuple[Any, ...] = ("template",) if spec.type == "text" else ("messages", index, "content")
        label = "template" if spec.type == "text" else f"messages[{index}].content"
        try:
            names = variables_used(source)
        except TemplateProblem as exc:
            template_ok = False
            within = f" (line {exc.line} of the template)" if exc.line else ""
            problems.append(f"{at(*loc)}: {label}: template syntax error{within}: {exc.message}")
            continue
        used |= names
        for name in sorted(names - declared):
            problems.append(
                f"{at(*loc)}: {label}: uses the variable {name!r}, which variables.properties does not declare"
            )
    for name in sorted(declared - used):
        warnings.append(f"{at('variables')}: variables.properties.{name} is declared but no template uses it")
    if template_ok:
        compiled = compile_prompt(spec.message_templates())

    rf = spec.parameters.response_format
    if rf is not None and rf.get("type") not in ("text", "json_object", "json_schema"):
        problems.append(f"{at('parameters', 'response_format')}: parameters.response_format: type must be text, "
                        "json_object or json_schema")

    for index, case in enumerate(spec.golden):
        label = f"golden[{index}]" + (f" ({case.name})" if case.name else "")
        for problem in evaluators.problems(case.expect):
            problems.append(f"{origin}: {label}: expect.{problem}")
        if validator is not None:
            error = best_match(validator.iter_errors(case.variables))
            if error is not None:
                param, message = variable_error(error)
                problems.append(f"{origin}: {label}: {param}: {message}")
                continue
        if compiled is not None and not problems:
            try:
                compiled.render(case.variables)
            except RenderError as exc:
                problems.append(f"{origin}: {label}: {field} fails to render: {exc}")
    if problems:
        raise SourceError(problems)
    return warnings


def variable_error(error: Any) -> tuple[str, str]:
    """A jsonschema error on ``variables`` as ``(param, message)``; the param names the variable."""
    path = "variables" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                                 for part in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            return f"{path}.{missing[0]}", f"the required variable {missing[0]!r} is missing"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set((error.schema.get("properties") or {}).keys())
        extra = sorted(name for name in error.instance if name not in allowed)
        if extra:
            return f"{path}.{extra[0]}", f"unexpected variable {extra[0]!r}"
    return path, error.message


def render_source(spec: PromptSpec) -> str:
    """The version as tidy YAML, for ``show`` and ``diff``: the same content always reads the same."""
    document: dict[str, Any] = {"name": spec.name, "type": spec.type}
    for key in ("description", "owner"):
        if getattr(spec, key):
            document[key] = getattr(spec, key)
    if spec.tags:
        document["tags"] = list(spec.tags)
    document["model"] = spec.model
    parameters = spec.parameters.as_body()
    if parameters:
        document["parameters"] = parameters
    document["variables"] = spec.variables
    if spec.type == "text":
        document["template"] = spec.template
    else:
        document["messages"] = [message.model_dump() for message in spec.messages]
    if spec.evaluation != EvaluationSpec():
        document["evaluation"] = spec.evaluation.model_dump()
    if spec.golden:
        document["golden"] = [case.model_dump(exclude_defaults=True) for case in spec.golden]
    return str(yaml.dump(document, Dumper=_SourceDumper, sort_keys=False, allow_unicode=True, width=110))


class _SourceDumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships no annotations
    pass


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line templates as block literals, so a diff shows the changed line, not one long string.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_SourceDumper.add_representer(str, _represent_str)
