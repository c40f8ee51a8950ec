"""`/functions` (upload, list, show, replace, delete) and `/file/<cfid>.wasm`.

A .wasm is built (validated, compiled) before the upload is answered: 201, or 400
saying what is wrong. A model (told apart by content) is answered at once, 202
with its record's URL, and built as a job (toolchain/jobs.py): its record says
`building`, then `ready` or `failed` with the reason; a new model over a function
with a module shows its build in the record's `build` while the old one serves.
"""

from __future__ import annotations

from contextlib import closing

from quart import Blueprint, Response, request

from wasmq.api.access import private_flag, require_key, require_key_if_private
from wasmq.api.bounds import bounds
from wasmq.api.caller import caller
from wasmq.api.negotiation import respond
from wasmq.api.services import Services, services
from wasmq.api.submission import quota_exceeded
from wasmq.api.upload_body import Upload
from wasmq.api.upload_form import (
    function_name,
    read_form,
    requested_limits,
    requested_queue,
    text_field,
    uploaded_file,
)
from wasmq.broker.errors import BadRequest, QuotaExceeded
from wasmq.broker.registry import FunctionRecord
from wasmq.broker.settings import MB
from wasmq.toolchain.build import Built
from wasmq.toolchain.model import is_onnx
from wasmq.toolchain.spool import Spooled

bp = Blueprint("functions", __name__)


@bp.post("/functions")
async def create() -> Response:
    svc = services()
    require_key(svc.settings, "uploading a function")  # before the body is read
    form = await read_form(svc.settings)
    try:
        return await bounds().on_thread(_create)(svc, form)
    except BaseException:  # refused before a build took the file (closing twice is harmless)
        if form.file is not None:
            form.file.close()
        raise


def _create(svc: Services, form: Upload) -> Response:
    private = private_flag(form.form.get("private"), svc.settings)
    queue = requested_queue(svc.settings, form.form, svc.settings.queue)
    fields = {"name": function_name(form),
              "documentation": text_field(form.form, "documentation"),
              "exampleinput": text_field(form.form, "exampleinput"), "private": private,
              "limits": requested_limits(svc.settings, form.form), "queue": queue}
    upload = uploaded_file(form)
    who = _within_quota(svc, upload)
    if _is_model(upload):
        svc.tasks.usage.add(svc.tasks.redis, who, upload.size)  # kept while it builds
        return _accepted(svc.jobs.create(upload, caller=who, **fields), 201)
    built = _built(svc, upload, who)
    try:
        record = svc.registry.create(
            built.wasm, imports=built.info.imports, exports=built.info.exports,
            artifact=built.artifact, kind=built.kind, model=built.model, **fields)
        _count_stored(svc, who, built)
    finally:
        built.release()
    return respond(record.public(), 201)


def _within_quota(svc: Services, upload: Spooled) -> str:
    """The uploading caller, refused before anything is built if what it keeps in the
    store and this upload would pass its storage quota."""
    who = caller()
    quota = svc.settings.storage_quota
    if upload.size > quota:  # no wait helps: only the operator can
        upload.close()
        raise QuotaExceeded(
            f"storage quota reached: this upload of {upload.size / MB:.1f} MB alone is over "
            f"the storage quota of {quota / MB:g} MB per {who.kind} "
            f"(WASMQ_STORAGE_PER_CALLER_MB); the store keeps an upload while it builds, "
            f"then its module and compiled form (for a model, about 3 times its size): "
            f"ask the operator to raise WASMQ_STORAGE_PER_CALLER_MB, with room in Redis "
            f"(WASMQ_REDIS_MAXMEMORY_MB)")
    kept = svc.tasks.usage.kept(svc.tasks.redis, who.identity)
    if kept + upload.size > quota:
        upload.close()
        raise quota_exceeded(svc.settings, who.kind, kept)
    return who.identity


def _count_stored(svc: Services, who: str, built: Built) -> None:
    """A stored module counts in its uploader's usage: the module and its artifact."""
    svc.tasks.usage.add(svc.tasks.redis, who, len(built.wasm) + len(built.artifact or b""))


def _is_model(upload: Spooled) -> bool:
    with upload.view() as data:
        return is_onnx(data)


def _built(svc: Services, upload: Spooled, who: str) -> Built:
    """A .wasm built on this request's thread; its upload file is gone after."""
    with closing(upload):
        return svc.builds.build(upload, who)


def _accepted(record: FunctionRecord, done: int) -> Response:
    """A model's upload: `done` if nothing is left to build, else 202 pointing at the
    record to poll."""
    pending = record.status == "building" or record.build is not None
    return respond(record.public(), 202 if pending else done,
                   {"Location": f"/functions/{record.cfid}"})


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
def index() -> Response:
    offset = _int_arg("offset", 0, 0, 10**9)
    limit = _int_arg("limit", 50, 1, 1000)
    # A page holds at most LIST_BYTES of records: fewer than `limit` when they are
    # large; the next page starts at offset + len(functions).
    records, total = services().registry.list(offset, limit)
    return respond({"functions": [r.public() for r in records], "total": total,
                    "offset": offset, "limit": limit})


@bp.get("/functions/<cfid>")
def show(cfid: str) -> Response:
    return respond(services().registry.get(cfid).public())


@bp.put("/functions/<cfid>")
async def replace(cfid: str) -> Response:
    svc = services()
    require_key(svc.settings, "replacing a function")
    # 404 before reading a body we would throw away
    await bounds().on_thread(svc.registry.get)(cfid)
    form = await read_form(svc.settings)
    try:
        return await bounds().on_thread(_replace)(svc, cfid, form)
    except BaseException:  # refused before a build took the file (closing twice is harmless)
        if form.file is not None:
            form.file.close()
        raise


def _replace(svc: Services, cfid: str, form: Upload) -> Response:
    raw_private = form.form.get("private")
    private = None if raw_private is None else private_flag(raw_private, svc.settings)
    limits = requested_limits(svc.settings, form.form)
    queue = requested_queue(svc.settings, form.form, None)
    upload = uploaded_file(form)
    who = _within_quota(svc, upload)
    if _is_model(upload):
        if queue is not None:
            svc.registry.set_queue(cfid, queue)
        svc.tasks.usage.add(svc.tasks.redis, who, upload.size)  # kept while it builds
        return _accepted(svc.jobs.rebuild(cfid, upload, limits=limits, private=private,
                                          caller=who), 200)
    built = _built(svc, upload, who)
    try:
        record = svc.registry.replace(cfid, built.wasm, imports=built.info.imports,
                                      exports=built.info.exports, limits=limits,
                                      private=private, queue=queue, artifact=built.artifact,
                                      kind=built.kind, model=built.model)
        _count_stored(svc, who, built)
    finally:
        built.release()
    return respond(record.public())


@bp.delete("/functions/<cfid>")
def delete(cfid: str) -> Response:
    svc = services()
    require_key(svc.settings, "deleting a function")
    svc.registry.delete(cfid)
    return Response(status=204)


@bp.get("/file/<cfid>.wasm")
def download(cfid: str) -> Response:
    svc = services()
    record = svc.registry.get(cfid)
    require_key_if_private(svc.settings, record.private, "downloading this function")
    return Response(svc.registry.binary(record), mimetype="application/wasm",
                    headers={"Content-Disposition": f'attachment; filename="{cfid}.wasm"',
                             "ETag": f'"{record.sha256}"'})
