"""The admin HTTP API (FastAPI): thin shells over the same services the CLI uses.

``create_admin_app`` loads on first use, so the remote CLI can import the API's models
(``gateway.admin.prompt_models``) without the FastAPI app and the server runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.admin.app import create_admin_app

__all__ = ["create_admin_app"]


def __getattr__(name: str) -> Any:
    if name == "create_admin_app":
        from gateway.admin.app import create_admin_app

        return create_admin_app
    raise AttributeError(f"module 'gateway.admin' has no attribute {name!r}")
