"""`/healthz` and `/openapi.json`."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from wasmq.api.openapi import spec
from wasmq.api.services import services

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    svc = services()
    try:
        svc.registry.redis.ping()
    except Exception as exc:  # any failure to reach Redis means "not ready"
        return jsonify({"status": "unavailable", "redis": False, "message": str(exc)}), 503
    return jsonify({"status": "ok", "redis": True})


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(spec(keys_configured=bool(services().settings.api_keys)))
