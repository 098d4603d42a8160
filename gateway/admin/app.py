"""The FastAPI app for everything that is not ``/v1``: admin routes and the OpenAPI docs."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.admin import audit, keys, prompts, reports
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
            return _error_response(InvalidRequest(f"{path} does not take {request.method}.",
                                                  code="method_not_allowed", status=405))
        return _error_response(GatewayError(str(error.detail), status=error.status_code))

    return app


_V1_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/models"})
