"""The prompt repository's own errors: a refused push, and a version that fails its integrity check."""

from __future__ import annotations

from gateway.errors import GatewayError, InvalidRequest


class PromptIntegrityError(GatewayError):
    """A version whose stored content no longer matches its signature: never served.

    A 500 because the caller did nothing wrong and retrying will not help until an operator
    re-pushes the prompt or moves the label to a good version.
    """

    status = 500
    type = "server_error"
    code = "prompt_integrity_failed"


class InvalidPrompt(InvalidRequest):
    """A prompt source that cannot be pushed; ``problems`` lists each with file, line and field."""

    code = "invalid_prompt"

    def __init__(self, problems: list[str]) -> None:
        summary = problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems)
        super().__init__(f"The prompt is invalid: {summary}", extra={"problems": problems})
        self.problems = problems


class RenderError(Exception):
    """A template that failed while rendering (e.g. an attribute missing from a variable).

    Defined here rather than beside the renderer so the request path can catch it without
    importing Jinja2 before the first prompt is served.
    """

    def __init__(self, index: int, message: str, *, timed_out: bool = False) -> None:
        super().__init__(f"messages[{index}]: {message}")
        self.index = index
        self.message = message
        self.timed_out = timed_out  # ran out of time (the only failure a longer budget could change)
