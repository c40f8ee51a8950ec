"""Which routes answer pages of other origins: /task, /retrieve and /file (a browser
fetches the binary to run it, and calls the API); nothing else does.

`Cors` is an ASGI middleware that adds the headers to every reply of those routes,
the app's and the bounds' refusals alike, so no layer writes them itself."""

from __future__ import annotations

from typing import Any

CORS_PATHS = ("/task/", "/retrieve/", "/file/")


def cors_headers(path: str, origin: str | None, *, preflight_method: str | None = None,
                 preflight_headers: str | None = None) -> dict[str, str]:
    """The CORS headers of a reply to `path` (none off the CORS routes); a preflight
    (OPTIONS with Access-Control-Request-Method) is allowed what it asks for."""
    if not path.startswith(CORS_PATHS):
        return {}
    headers = {"Access-Control-Allow-Origin": origin or "*",
               "Access-Control-Expose-Headers": "Retry-After"}
    if origin:
        headers["Vary"] = "Origin"
    if preflight_method:
        headers["Access-Control-Allow-Methods"] = preflight_method
        if preflight_headers:
            headers["Access-Control-Allow-Headers"] = preflight_headers
    return headers


class Cors:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(CORS_PATHS):
            await self.app(scope, receive, send)
            return
        asked = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]
                 if k.lower() in (b"origin", b"access-control-request-method",
                                  b"access-control-request-headers")}
        preflight = scope["method"] == "OPTIONS"
        extra = cors_headers(
            scope["path"], asked.get(b"origin"),
            preflight_method=asked.get(b"access-control-request-method") if preflight else None,
            preflight_headers=asked.get(b"access-control-request-headers"))

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ())
                           if k.lower() != b"vary" or "Vary" not in extra]
                vary = [v for k, v in message.get("headers", ()) if k.lower() == b"vary"]
                for name, value in extra.items():
                    if name == "Vary":
                        value = ", ".join([*(v.decode("latin-1") for v in vary), value])
                    headers.append((name.lower().encode(), value.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)
