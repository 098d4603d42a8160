"""Types shared by the admin API's response models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (every stored time is UTC); the API always says so.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: A timestamp the API writes with its UTC offset (``2026-12-05T12:00:00Z``-style, ``+00:00``).
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]
