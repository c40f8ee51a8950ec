"""The OpenAPI 3 document of every route, kept next to the routes it describes."""

from __future__ import annotations

from typing import Any

REPLY = {
    "type": "object",
    "required": ["statusCode", "result", "tid", "message", "timeOut", "resultUrl"],
    "properties": {
        "statusCode": {"type": "integer", "enum": [0, 1, 5],
                       "description": "1 done, 5 still queued or running, 0 failed"},
        "result": {"type": "string", "description": "the module's output, as written"},
        "tid": {"type": "string"},
        "message": {"type": "string"},
        "timeOut": {"type": "boolean"},
        "resultUrl": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed"]},
        "cfid": {"type": "string"},
        "node": {"type": "string", "description": "host:pid of the worker that ran it"},
        "attempts": {"type": "integer"},
        "timings": {"type": "object", "properties": {
            name: {"type": "string", "nullable": True}
            for name in ("queuedAt", "startedAt", "finishedAt")} | {
            name: {"type": "number", "nullable": True}
            for name in ("queueMs", "execMs", "totalMs")}},
        "logs": {"type": "object", "properties": {
            "stdout": {"type": "string"}, "stderr": {"type": "string"}},
            "description": "the module's captured output, 64 KiB of each at most"},
    },
}
LIMIT_FIELDS = {
    "timeout_s": "wall-time limit in seconds",
    "max_memory_mb": "linear memory limit in MB (at least one 64 KiB page)",
    "max_input_mb": "input limit in MB",
    "max_output_mb": "output limit in MB",
}
LIMITS = {"type": "object", "description": "this function's own limits, each capped by "
                                           "the server's maximum",
          "properties": {name: {"type": "number"} for name in LIMIT_FIELDS}}
FUNCTION = {
    "type": "object",
    "properties": {name: {"type": kind} for name, kind in [
        ("cfid", "string"), ("name", "string"), ("documentation", "string"),
        ("exampleinput", "string"), ("sha256", "string"), ("size", "integer"),
        ("createdAt", "string"), ("updatedAt", "string"), ("private", "boolean")]}
    | {"imports": {"type": "array", "items": {"type": "string"}},
       "exports": {"type": "array", "items": {"type": "string"}},
       "limits": LIMITS,
       "kind": {"type": "string", "enum": ["wasm", "onnx"],
                "description": "onnx: a model the server built into a module"},
       "status": {"type": "string", "enum": ["building", "ready", "failed"],
                  "description": "a model's build: calls answer 503 while building, "
                                 "409 once failed"},
       "reason": {"type": "string", "description": "why the build failed"},
       "model": {"type": "object", "nullable": True,
                 "description": "a model's inputs, outputs, operators and sizes"},
       "build": {"type": "object", "nullable": True,
                 "description": "a new model uploaded over a ready function: its module "
                                "serves until this build is ready",
                 "properties": {"status": {"type": "string", "enum": ["building", "failed"]},
                                "reason": {"type": "string"},
                                "startedAt": {"type": "string"},
                                "finishedAt": {"type": "string"}}}},
}
ENVELOPE = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "input": {"type": "object", "required": ["data"], "properties": {
            "content-type": {"type": "string"},
            "location": {"type": "string", "enum": ["embedded"]},
            "data": {"type": "string", "description": "handed to the module byte for byte"}}},
        "output": {"type": "object", "properties": {
            "content-type": {"type": "string"}, "location": {"type": "string"}}},
        "control": {"type": "integer"},
        "properties": {"type": "object", "properties": {"language": {"type": "string"}}},
    },
}
MSGPACK_ENVELOPE = {**ENVELOPE, "description": "the same envelope in msgpack; input.data "
                    "may be bytes (bin) as well as a string"}
MSGPACK_REPLY = {**REPLY, "description": "the same reply in msgpack; result is bytes (bin)",
                 "properties": {**REPLY["properties"],
                                "result": {"type": "string", "format": "binary"}}}
UPLOAD = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"},
                   "name": {"type": "string", "maxLength": 200},
                   "documentation": {"type": "string", "maxLength": 65536},
                   "exampleinput": {"type": "string", "maxLength": 65536},
                   "private": {"type": "string", "enum": ["true", "false"],
                               "description": "calling, downloading and retrieving "
                                              "results need an API key"}}
    | {name: {"type": "number", "exclusiveMinimum": True, "minimum": 0,
              "description": text} for name, text in LIMIT_FIELDS.items()}}}}
BEARER = [{"apiKey": []}]
# Routes of private functions: a key is needed only when the function is private.
BEARER_IF_PRIVATE = [{}, {"apiKey": []}]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _task_reply(description: str) -> dict[str, Any]:
    """JSON, or msgpack with `result` as raw bytes for `Accept: application/msgpack`."""
    answer = _json(REPLY, description)
    answer["content"]["application/msgpack"] = {"schema": MSGPACK_REPLY}
    return answer


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad request", 401: "missing API key", 403: "wrong API key",
            404: "unknown id", 409: "the model could not be built (the message says why)",
            413: "too large", 429: "rate limited",
            503: "Redis unavailable, builds busy, or the model still building (Retry-After)"}
    text[401] = "no API key (the function or route needs one)"
    text[403] = "the API key is not one of the server's"
    return {str(c): _json(REPLY, text[c]) for c in codes}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def spec(keys_configured: bool) -> dict[str, Any]:
    """The document; without API keys on the server nothing asks for one, so
    Swagger UI shows no locks and no Authorize button."""
    document = _document()
    if not keys_configured:
        del document["components"]
        for operations in document["paths"].values():
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.pop("security", None)
    return document


def _document() -> dict[str, Any]:
    cfid, tid = _path_param("cfid"), _path_param("tid")
    return {
        "openapi": "3.0.3",
        "info": {"title": "wasmq", "version": "0.1.0",
                 "description": "WebAssembly compute functions as REST endpoints "
                                "(Scailable-compatible)."},
        "components": {"securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "one of the keys in WASMQ_API_KEYS"}}},
        "paths": {
            "/task/{cfid}": {"post": {
                "summary": "Run a compute function on the queue",
                "parameters": [cfid, {"name": "wait", "in": "query", "required": False,
                                      "schema": {"type": "number", "minimum": 0,
                                                 "maximum": 300}}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ENVELOPE},
                    "application/x-www-form-urlencoded": {"schema": ENVELOPE},
                    "application/msgpack": {"schema": MSGPACK_ENVELOPE}}},
                "security": BEARER_IF_PRIVATE,
                "responses": {"200": _task_reply("done (1) or failed (0)"),
                              "202": _task_reply("still queued or running (5)"),
                              **_errors(400, 401, 403, 404, 409, 413, 429, 503)}}},
            "/retrieve/{tid}": {"get": {
                "summary": "The state or result of a task, with its logs and timings",
                "parameters": [tid],
                "security": BEARER_IF_PRIVATE,
                "responses": {"200": _task_reply("done or failed"),
                              "202": _task_reply("still queued or running"),
                              **_errors(401, 403, 404, 503)}}},
            "/functions": {
                "get": {"summary": "List functions, newest first",
                        "parameters": [
                            {"name": "offset", "in": "query",
                             "schema": {"type": "integer", "minimum": 0}},
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                        "responses": {"200": _json({"type": "object", "properties": {
                            "functions": {"type": "array", "items": FUNCTION},
                            "total": {"type": "integer"}, "offset": {"type": "integer"},
                            "limit": {"type": "integer"}}}, "functions"),
                            **_errors(400)}},
                "post": {"summary": "Upload a module, or an ONNX model to build into one",
                         "requestBody": {"required": True, "content": UPLOAD},
                         "security": BEARER,
                         "responses": {"201": _json(FUNCTION, "created"),
                                       "202": _json(FUNCTION, "a model, building: poll the "
                                                    "record at Location until its status "
                                                    "is ready or failed"),
                                       **_errors(400, 401, 403, 413, 503)}}},
            "/functions/{cfid}": {
                "parameters": [cfid],
                "get": {"summary": "A function's record",
                        "responses": {"200": _json(FUNCTION, "the record"), **_errors(404)}},
                "put": {"summary": "Replace the module under the same cfid",
                        "requestBody": {"required": True, "content": UPLOAD},
                        "security": BEARER,
                        "responses": {"200": _json(FUNCTION, "replaced"),
                                      "202": _json(FUNCTION, "a model, building: the current "
                                                   "module serves until it is ready (the "
                                                   "record's build)"),
                                      **_errors(400, 401, 403, 404, 413, 503)}},
                "delete": {"summary": "Delete a function",
                           "security": BEARER,
                           "responses": {"204": {"description": "deleted"},
                                         **_errors(401, 403, 404)}}},
            "/file/{cfid}.wasm": {"get": {
                "summary": "Download the module binary",
                "parameters": [cfid],
                "security": BEARER_IF_PRIVATE,
                "responses": {"200": {"description": "the binary", "content": {
                    "application/wasm": {"schema": {"type": "string", "format": "binary"}}}},
                    **_errors(401, 403, 404, 409, 503)}}},
            "/healthz": {"get": {"summary": "Liveness and Redis reachability",
                                 "responses": {"200": {"description": "ok"},
                                               "503": {"description": "Redis unreachable"}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics of the whole cluster (kept in Redis)",
                "responses": {"200": {"description": "Prometheus text format", "content": {
                    "text/plain": {"schema": {"type": "string"}}}}, **_errors(503)}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
