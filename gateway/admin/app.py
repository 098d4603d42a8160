"""The FastAPI app for everything that is not ``/v1``: admin routes and the OpenAPI docs."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from gateway.admin import audit, keys, prompts, reports, rollouts, shadow
from gateway.admin import budgets as budgets_admin
from gateway.admin import cache as cache_admin
from gateway.errors import GatewayError, InvalidRequest, NotFound, error_body
from gateway.runtime import Runtime


def _error_response(error: GatewayError) -> Response:
    return Response(error_body(error), status_code=error.status, media_type="application/json",
                    headers=error.headers)


def create_admin_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="LLM gateway admin API",
        version="0.1.0",
        description="Keys, prompts, policies, audit, cache and cost reports. "
        "Applications call the OpenAI-compatible API under /v1.",
    )
    app.state.runtime = runtime
    app.include_router(keys.router)
    app.include_router(cache_admin.router)
    app.include_router(prompts.router)
    app.include_router(audit.router)
    app.include_router(reports.router)
    app.include_router(reports.page_router)
    app.include_router(budgets_admin.router)
    app.include_router(rollouts.router)
    app.include_router(shadow.router)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, error: GatewayError) -> Response:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        return _error_response(InvalidRequest(f"{param or 'body'}: {first['msg']}", param=param or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        # FastAPI's own 404/405 ({"detail": "Not Found"}) in OpenAI's shape, like every other error.
        path = request.url.path
        if error.status_code == 404:
            hint = ""
            if f"/v1{path}" in _V1_PATHS:
                hint = f"; the OpenAI-compatible API lives under /v1: did you mean /v1{path}?"
            return _error_response(NotFound(f"Unknown URL {request.method} {path}{hint}.", code="unknown_url"))
        if error.status_code == 405:
            response = _error_response(InvalidRequest(f"{path} does not take {request.method}.",
                                                      code="method_not_allowed", status=405))
            # RFC 9110: a 405 names every method the resource takes. FastAPI has a route per
            # method, and Starlette's Allow names only the first route's.
            methods = _allowed_methods(app, path)
            if methods:
                response.headers["Allow"] = ", ".join(methods)
            return response
        return _error_response(GatewayError(str(error.detail), status=error.status_code))

    return app


_V1_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/models"})


# The errors every admin operation may answer, in OpenAI's shape (see gateway.errors). FastAPI
# documents 422 for validation errors; the API answers 400, like /v1.
_ERROR_RESPONSES = {
    "400": "Invalid request: a field, a query parameter or the body is not what the operation takes.",
    "401": "Missing, unknown or revoked API key.",
    "403": "The key lacks the role, or the request came from another site.",
    "404": "Unknown key, prompt, version, label or URL.",
    "409": "The change conflicts with the current state (e.g. a protected label without an evaluation).",
    "413": "The body is larger than server.admin_max_body_bytes.",
    "503": "A dependency (storage, Redis) is unavailable.",
}
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's description, corrected to what the API does: OpenAI-shaped errors, no 422."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["Error"] = _ERROR_SCHEMA
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in _ERROR_RESPONSES.items():
                responses.setdefault(status, {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                })
    app.openapi_schema = schema
    return schema


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API documents for ``path`` (its OpenAPI description is the route table)."""
    found: set[str] = set()
    for template, item in _openapi(app).get("paths", {}).items():
        if compile_path(template)[0].match(path):
            found.update(method.upper() for method in item)
    return sorted(found)
