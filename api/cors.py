"""Which routes answer pages of other origins: /task, /retrieve and /file (a browser
fetches the binary to run it, and calls the API); nothing else does."""

from __future__ import annotations

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
