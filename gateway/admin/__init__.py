"""The admin HTTP API (FastAPI): thin shells over the same services the CLI uses."""

from gateway.admin.app import create_admin_app

__all__ = ["create_admin_app"]
