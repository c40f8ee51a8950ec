"""Timestamps in one format: ISO 8601 UTC with milliseconds, and float seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")
