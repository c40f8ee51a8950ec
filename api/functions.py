"""`/functions` (upload, list, show, replace, delete) and `/file/<cfid>.wasm`.

A .wasm is built (validated, compiled) before the upload is answered: 201, or 400
saying what is wrong. A model (told apart by content) is answered at once, 202
with its record's URL, and built as a job (toolchain/jobs.py): its record says
`building`, then `ready` or `failed` with the reason; a new model over a function
with a module shows its build in the record's `build` while the old one serves.
"""

from __future__ import annotations

from contextlib import closing

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from wasmq.api.access import private_flag, require_key, require_key_if_private
from wasmq.api.ratelimit import caller
from wasmq.api.services import services
from wasmq.api.upload_form import (
    function_name,
    requested_limits,
    requested_queue,
    text_field,
    uploaded_file,
)
from wasmq.broker.errors import BadRequest
from wasmq.broker.registry import FunctionRecord
from wasmq.toolchain.build import Built
from wasmq.toolchain.model import is_onnx
from wasmq.toolchain.spool import Spooled

bp = Blueprint("functions", __name__)


@bp.post("/functions")
def create() -> ResponseReturnValue:
    svc = services()
    require_key(svc.settings, "uploading a function")
    private = private_flag(request.form.get("private"), svc.settings)
    queue = requested_queue(svc.settings, svc.settings.queue)
    fields = {"name": function_name(), "documentation": text_field("documentation"),
              "exampleinput": text_field("exampleinput"), "private": private,
              "limits": requested_limits(svc.settings), "queue": queue}
    upload = uploaded_file(svc.settings)
    who = caller(svc.settings).identity
    if _is_model(upload):
        return _accepted(svc.jobs.create(upload, caller=who, **fields), 201)
    built = _built(upload, who)
    try:
        record = svc.registry.create(
            built.wasm, imports=built.info.imports, exports=built.info.exports,
            artifact=built.artifact, kind=built.kind, model=built.model, **fields)
    finally:
        built.release()
    return jsonify(record.public()), 201


def _is_model(upload: Spooled) -> bool:
    with upload.view() as data:
        return is_onnx(data)


def _built(upload: Spooled, who: str) -> Built:
    """A .wasm built in this request's thread; its upload file is gone after."""
    with closing(upload):
        return services().builds.build(upload, who)


def _accepted(record: FunctionRecord, done: int) -> ResponseReturnValue:
    """A model's upload: `done` if nothing is left to build, else 202 pointing at the
    record to poll."""
    pending = record.status == "building" or record.build is not None
    return jsonify(record.public()), 202 if pending else done, \
        {"Location": f"/functions/{record.cfid}"}


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
    # A page holds at most LIST_BYTES of records: fewer than `limit` when they are
    # large; the next page starts at offset + len(functions).
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
    limits = requested_limits(svc.settings)
    queue = requested_queue(svc.settings, None)
    upload = uploaded_file(svc.settings)
    who = caller(svc.settings).identity
    if _is_model(upload):
        if queue is not None:
            svc.registry.set_queue(cfid, queue)
        return _accepted(svc.jobs.rebuild(cfid, upload, limits=limits, private=private,
                                          caller=who), 200)
    built = _built(upload, who)
    try:
        record = svc.registry.replace(cfid, built.wasm, imports=built.info.imports,
                                      exports=built.info.exports, limits=limits,
                                      private=private, queue=queue, artifact=built.artifact,
                                      kind=built.kind, model=built.model)
    finally:
        built.release()
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
