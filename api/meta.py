"""`/healthz` and `/openapi.json`."""

from __future__ import annotations

from quart import Blueprint, Response

from wasmq.api.negotiation import respond
from wasmq.api.openapi import spec
from wasmq.api.services import services

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    svc = services()
    try:
        svc.registry.redis.ping()
    except Exception as exc:  # any failure to reach Redis means "not ready"
        return respond({"status": "unavailable", "redis": False, "message": str(exc)}, 503)
    return respond({"status": "ok", "redis": True})


@bp.get("/openapi.json")
def openapi() -> Response:
    return respond(spec(keys_configured=bool(services().settings.api_keys)))
