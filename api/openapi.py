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
    },
}
FUNCTION = {
    "type": "object",
    "properties": {name: {"type": kind} for name, kind in [
        ("cfid", "string"), ("name", "string"), ("documentation", "string"),
        ("exampleinput", "string"), ("sha256", "string"), ("size", "integer"),
        ("createdAt", "string"), ("updatedAt", "string"), ("private", "boolean")]}
    | {"imports": {"type": "array", "items": {"type": "string"}},
       "exports": {"type": "array", "items": {"type": "string"}}},
}
ENVELOPE = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "input": {"type": "object", "required": ["data"], "properties": {
            "content-type": {"type": "string"}, "location": {"type": "string"},
            "data": {"type": "string"}}},
        "output": {"type": "object"},
        "control": {"type": "integer"},
        "properties": {"type": "object"},
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
                   "name": {"type": "string"}, "documentation": {"type": "string"},
                   "exampleinput": {"type": "string"}}}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _task_reply(description: str) -> dict[str, Any]:
    """JSON, or msgpack with `result` as raw bytes for `Accept: application/msgpack`."""
    answer = _json(REPLY, description)
    answer["content"]["application/msgpack"] = {"schema": MSGPACK_REPLY}
    return answer


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad request", 401: "missing API key", 403: "wrong API key",
            404: "unknown id", 413: "too large", 429: "rate limited",
            503: "Redis unavailable"}
    return {str(c): _json(REPLY, text[c]) for c in codes}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def spec() -> dict[str, Any]:
    cfid, tid = _path_param("cfid"), _path_param("tid")
    return {
        "openapi": "3.0.3",
        "info": {"title": "wasmq", "version": "0.1.0",
                 "description": "WebAssembly compute functions as REST endpoints "
                                "(Scailable-compatible)."},
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
                "responses": {"200": _task_reply("done (1) or failed (0)"),
                              "202": _task_reply("still queued or running (5)"),
                              **_errors(400, 404, 413, 429, 503)}}},
            "/retrieve/{tid}": {"get": {
                "summary": "The state or result of a task",
                "parameters": [tid],
                "responses": {"200": _task_reply("done or failed"),
                              "202": _task_reply("still queued or running"),
                              **_errors(404, 503)}}},
            "/functions": {
                "get": {"summary": "List functions, newest first",
                        "parameters": [
                            {"name": "offset", "in": "query",
                             "schema": {"type": "integer", "minimum": 0}},
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                        "responses": {"200": _json({"type": "object", "properties": {
                            "functions": {"type": "array", "items": FUNCTION},
                            "total": {"type": "integer"}}}, "functions"),
                            **_errors(400)}},
                "post": {"summary": "Upload a module",
                         "requestBody": {"required": True, "content": UPLOAD},
                         "responses": {"201": _json(FUNCTION, "created"),
                                       **_errors(400, 401, 403, 413)}}},
            "/functions/{cfid}": {
                "parameters": [cfid],
                "get": {"summary": "A function's record",
                        "responses": {"200": _json(FUNCTION, "the record"), **_errors(404)}},
                "put": {"summary": "Replace the module under the same cfid",
                        "requestBody": {"required": True, "content": UPLOAD},
                        "responses": {"200": _json(FUNCTION, "replaced"),
                                      **_errors(400, 401, 403, 404, 413)}},
                "delete": {"summary": "Delete a function",
                           "responses": {"204": {"description": "deleted"},
                                         **_errors(401, 403, 404)}}},
            "/file/{cfid}.wasm": {"get": {
                "summary": "Download the module binary",
                "parameters": [cfid],
                "responses": {"200": {"description": "the binary", "content": {
                    "application/wasm": {"schema": {"type": "string", "format": "binary"}}}},
                    **_errors(404)}}},
            "/healthz": {"get": {"summary": "Liveness and Redis reachability",
                                 "responses": {"200": {"description": "ok"},
                                               "503": {"description": "Redis unreachable"}}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
