"""Who may do what: API keys guard changes to functions and private functions.

Without `WASMQ_API_KEYS` the gateway is open (a single-user `wasmq up`).
With keys, uploading, replacing and deleting need `Authorization: Bearer
<key>`; a function uploaded as private can be called, downloaded and its
results retrieved only with a key. Keys are compared in constant time.
"""

from __future__ import annotations

from wasmq.api.caller import caller, server_key
from wasmq.broker.errors import BadRequest, Forbidden, Unauthorized
from wasmq.broker.settings import Settings

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def presented_key() -> str | None:
    """The key the current request sent, valid or not (None: none)."""
    return caller().presented


FROM_REQUEST = "from the request"  # the key of the current request


def require_key(settings: Settings, action: str, presented: str | None = FROM_REQUEST) -> None:
    """401 without a key, 403 with a wrong one; a no-op when no keys are configured.
    `presented` is the key sent (None: none), when not the current request's."""
    if not settings.api_keys:
        return
    key = presented_key() if presented is FROM_REQUEST else presented
    if key is None:
        raise Unauthorized(f"{action} needs an API key: send 'Authorization: Bearer <key>'")
    if server_key(settings, key) is None:
        raise Forbidden(f"the API key sent is not valid; {action} needs one of the "
                        f"server's keys (WASMQ_API_KEYS)")


def require_key_if_private(settings: Settings, private: bool, action: str,
                           presented: str | None = FROM_REQUEST) -> None:
    if not private:
        return
    if not settings.api_keys:  # keys were removed after upload: stay closed
        raise Forbidden(f"{action} is refused: the function is private and this server "
                        f"has no API keys configured (WASMQ_API_KEYS)")
    require_key(settings, action, presented)


def private_flag(raw: str | None, settings: Settings) -> bool:
    """Parse the upload form's `private` field; private needs keys to mean anything."""
    value = (raw or "").strip().lower()
    if value not in TRUE + FALSE:
        raise BadRequest(f"private={raw!r} is not a boolean; send true or false")
    private = value in TRUE
    if private and not settings.api_keys:
        raise BadRequest("private=true needs API keys: this server has none configured "
                         "(set WASMQ_API_KEYS)")
    return private
