"""`/functions` (upload, list, show, replace, delete) and `/file/<cfid>.wasm`."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from wasmq.api.access import private_flag, require_key, require_key_if_private
from wasmq.api.services import Services, services
from wasmq.broker.errors import BadRequest, TooLarge
from wasmq.broker.limits import OVERRIDABLE, Limits
from wasmq.broker.settings import MB
from wasmq.toolchain.build import Built

bp = Blueprint("functions", __name__)


def _uploaded_module(svc: Services) -> Built:
    """The binary, what it exports and imports, and its compiled form for the workers,
    built in a child process under the compile limits (toolchain/build.py)."""
    upload = request.files.get("file")
    if upload is None:
        raise BadRequest("send the module as a multipart form field named 'file'")
    wasm = upload.read(svc.settings.max_module_mb * MB + 1)
    if len(wasm) > svc.settings.max_module_mb * MB:
        raise TooLarge(f"module is larger than the limit of {svc.settings.max_module_mb} MB")
    if not wasm:
        raise BadRequest("the uploaded file is empty")
    return svc.builds.build(wasm)


def _text_field(name: str, limit: int = 64 * 1024) -> str:
    value = request.form.get(name, "")
    if len(value) > limit:
        raise BadRequest(f"form field '{name}' is longer than {limit} characters")
    return value


def _requested_limits(svc: Services) -> dict[str, float] | None:
    """The form's limit fields capped at the server's; None when none were sent."""
    if not any(name in request.form for name in OVERRIDABLE):
        return None
    return Limits.from_settings(svc.settings).requested(request.form)


@bp.post("/functions")
def create() -> ResponseReturnValue:
    svc = services()
    require_key(svc.settings, "uploading a function")
    private = private_flag(request.form.get("private"), svc.settings)
    limits = _requested_limits(svc)
    built = _uploaded_module(svc)
    record = svc.registry.create(
        built.wasm, imports=built.info.imports, exports=built.info.exports,
        name=_text_field("name", 200),
        documentation=_text_field("documentation"), exampleinput=_text_field("exampleinput"),
        private=private, limits=limits, artifact=built.artifact)
    return jsonify(record.public()), 201


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


@bp.get("/functions")
def index() -> ResponseReturnValue:
    offset = _int_arg("offset", 0, 0, 10**9)
    limit = _int_arg("limit", 50, 1, 1000)
    records, total = services().registry.list(offset, limit)
    return jsonify({"functions": [r.public() for r in records], "total": total,
                    "offset": offset, "limit": limit})


@bp.get("/functions/<cfid>")
def show(cfid: str) -> ResponseReturnValue:
    return jsonify(services().registry.get(cfid).public())


@bp.put("/functions/<cfid>")
def replace(cfid: str) -> ResponseReturnValue:
    svc = services()
    require_key(svc.settings, "replacing a function")
    svc.registry.get(cfid)  # 404 before reading a body we would throw away
    raw_private = request.form.get("private")
    private = None if raw_private is None else private_flag(raw_private, svc.settings)
    limits = _requested_limits(svc)
    built = _uploaded_module(svc)
    record = svc.registry.replace(cfid, built.wasm, imports=built.info.imports,
                                  exports=built.info.exports, limits=limits, private=private,
                                  artifact=built.artifact)
    return jsonify(record.public())


@bp.delete("/functions/<cfid>")
def delete(cfid: str) -> ResponseReturnValue:
    svc = services()
    require_key(svc.settings, "deleting a function")
    svc.registry.delete(cfid)
    return Response(status=204)


@bp.get("/file/<cfid>.wasm")
def download(cfid: str) -> ResponseReturnValue:
    svc = services()
    record = svc.registry.get(cfid)
    require_key_if_private(svc.settings, record.private, "downloading this function")
    return Response(svc.registry.binary(record), mimetype="application/wasm",
                    headers={"Content-Disposition": f'attachment; filename="{cfid}.wasm"',
                             "ETag": f'"{record.sha256}"'})
