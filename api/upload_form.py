"""Reading the upload form of `POST /functions` and `PUT /functions/<cfid>`.

The form's field names and their parsing belong to HTTP, so they live here;
broker/limits.py only knows the limits themselves and how a function's own
ones narrow the server's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import fields

from werkzeug.datastructures import MultiDict

from wasmq.api.upload_body import Upload, read_upload
from wasmq.broker.errors import BadRequest, ConfigError
from wasmq.broker.limits import PAGE_MB, Limits
from wasmq.broker.settings import MB, Settings, check_queue_name
from wasmq.toolchain.spool import Spooled

# The form fields a function asks for its own limits with: the fields of Limits.
LIMIT_FIELDS = tuple(f.name for f in fields(Limits))  # in the order of Limits
TEXT_LIMIT = 64 * 1024
UPLOADS = ("functions.create", "functions.replace")  # the endpoints that take this form
NAME_LIMIT = 200


async def read_form(settings: Settings) -> Upload:
    """This request's upload form, its file within the module size limit."""
    return await read_upload(settings.max_module_mb * MB, TEXT_LIMIT)


def uploaded_file(upload: Upload) -> Spooled:
    """The uploaded file, within the module size limit (checked as it was read), in a
    file of its own (never whole in memory: toolchain/spool.py); the build step
    (toolchain/build.py) decides what it is. The caller closes it."""
    spooled = upload.file
    if spooled is None:
        raise BadRequest("send the module as a multipart form field named 'file'")
    if not spooled.size:
        spooled.close()
        raise BadRequest("the uploaded file is empty")
    return spooled


def text_field(form: MultiDict, name: str, limit: int = TEXT_LIMIT) -> str:
    value = form.get(name, "")
    if len(value) > limit:
        raise BadRequest(f"form field '{name}' is longer than {limit} characters")
    return value


def function_name(upload: Upload) -> str:
    """The `name` field, or the uploaded file's name without `.wasm`, as `wasmq deploy` does."""
    name = text_field(upload.form, "name", NAME_LIMIT).strip()
    if name:
        return name
    filename = os.path.basename(upload.filename)
    return os.path.splitext(filename)[0][:NAME_LIMIT]


def requested_queue(settings: Settings, form: MultiDict, default: str | None) -> str | None:
    """The form's `queue`: the Celery queue whose nodes run the function (`default`
    when absent: the installation's on upload, unchanged on PUT)."""
    raw = form.get("queue")
    if raw is None or raw.strip() == "":
        return default
    try:
        check_queue_name(raw.strip(), "queue")
    except ConfigError as exc:
        raise BadRequest(exc.message) from None
    return raw.strip()


def requested_limits(settings: Settings, form: MultiDict) -> dict[str, float] | None:
    """The form's limit fields capped at the server's; None when none were sent."""
    if not any(name in form for name in LIMIT_FIELDS):
        return None
    return parse_limits(form, Limits.from_settings(settings))


def parse_limits(form: Mapping[str, str], server: Limits) -> dict[str, float]:
    """The limits a form asks for, each capped at the server's.

    A value above the server's maximum is lowered to it, so one upload works
    on servers configured differently; the record shows what holds.
    """
    out: dict[str, float] = {}
    for name in LIMIT_FIELDS:
        raw = form.get(name)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            raise BadRequest(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise BadRequest(f"{name} must be a positive number, got {raw!r}")
        if name == "max_memory_mb" and value < PAGE_MB:
            raise BadRequest(f"max_memory_mb must be at least one 64 KiB page "
                             f"({PAGE_MB:g}), got {raw!r}")
        out[name] = min(value, getattr(server, name))
    return out
