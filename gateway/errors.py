"""The gateway's errors, and the one place they become OpenAI-shaped wire errors.

Every failure a caller can see is a ``GatewayError``. Stages raise the specific subclass;
only :func:`error_body` turns it into bytes, so the wire format lives in one place and no
stack trace, upstream secret or internal detail can leak through an error message.

    GatewayError                      status  type
    ├── InvalidRequest                  400   invalid_request_error
    │   ├── RequestTooLarge             413   invalid_request_error
    │   └── ContextLengthExceeded       400   invalid_request_error  context_length_exceeded
    ├── AuthenticationFailed            401   authentication_error
    ├── PermissionDenied                403   permission_error
    │   └── DataClassForbidden          403   permission_error   data_class_forbidden
    ├── NotFound                        404   invalid_request_error
    ├── RateLimited                     429   rate_limit_error   (budget_exceeded lives here too)
    ├── ServiceUnavailable              503   service_unavailable
    └── UpstreamError                   502   upstream_error
        ├── UpstreamMalformed           502   upstream_error
        ├── UpstreamRejected            4xx/5xx passed on as the upstream said (429 keeps retry-after)
        ├── UpstreamUnavailable         503   upstream_error
        └── UpstreamTimeout             504   upstream_error
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.redact import redact


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        # Extra fields merged into the error object (e.g. a budget's limit and reset time).
        self.extra = extra or {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class ContextLengthExceeded(InvalidRequest):
    """The prompt is longer than every deployment's context window (OpenAI's code for it)."""

    code = "context_length_exceeded"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class DataClassForbidden(PermissionDenied):
    """No deployment the request could reach may receive its data class; names the class."""

    code = "data_class_forbidden"

    def __init__(self, message: str, *, data_class: str, **kwargs: Any) -> None:
        super().__init__(message, extra={"data_class": data_class}, **kwargs)
        self.data_class = data_class


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    #: Whether the router may try the request again (same or next deployment).
    retryable: bool = False


class UpstreamMalformed(UpstreamError):
    code = "upstream_malformed_response"
    retryable = True


class UpstreamRejected(UpstreamError):
    """The upstream answered with an error status; 429 and 5xx may be retried elsewhere."""

    def __init__(self, message: str, *, status: int, **kwargs: Any) -> None:
        super().__init__(message, status=status, **kwargs)
        self.retryable = status == 429 or status >= 500
        if status == 429:
            self.type = "rate_limit_error"
            self.code = "upstream_rate_limited"
        elif status >= 500:
            # The caller did nothing wrong: a failing upstream is a bad gateway.
            self.status = 502
            self.code = f"upstream_status_{status}"
        else:
            self.type = "invalid_request_error"
            self.code = f"upstream_status_{status}"


class UpstreamStreamError(UpstreamError):
    """The upstream put an error event in its stream (OpenAI's in-band failure): it ends there.

    Before the caller saw a byte it may be retried like any upstream failure; after, the core
    handler turns it into the stream's one closing error event.
    """

    code = "upstream_stream_error"
    retryable = True


class UpstreamTooLarge(UpstreamError):
    """The upstream's answer passed its deployment's ``max_answer_bytes``: cut off there.

    Not retried: the answer was generated (and billed) in full or in part, and what a request
    asks for (a long answer, a large batch of embeddings) is likely as large anywhere else.
    """

    code = "upstream_answer_too_large"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    retryable = True


def error_body(error: GatewayError) -> bytes:
    """The OpenAI wire shape: ``{"error": {"message", "type", "param", "code"}}``."""
    payload: dict[str, Any] = {
        # The last net for text the gateway did not write (an upstream echoing a key).
        "message": redact(error.message),
        "type": error.type,
        "param": error.param,
        "code": error.code,
    }
    payload.update(error.extra)
    return orjson.dumps({"error": payload})


def internal_error() -> GatewayError:
    """What a caller sees for a bug: nothing about the bug itself (that goes to the log)."""
    return GatewayError("The gateway hit an internal error; the request id identifies it in the logs.")
