"""Who a request comes from, read once per request (api/bounds.py) and kept with it.

A valid API key names its caller, else the client address, so an unknown key buys
no allowance of its own. Behind a reverse proxy the client address is the
proxy's unless the proxy's headers are trusted (see the README). Keys are compared
in constant time and never sit in Redis in clear: a key's caller is named by its
digest.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from quart import request

from wasmq.broker.settings import Settings

SCOPE_KEY = "wasmq.caller"  # where the request's Caller is kept in its ASGI scope


@dataclass(frozen=True)
class Caller:
    """A request's sender: `identity` names its bounds, counters and accounting."""

    identity: str
    by_key: bool
    presented: str | None = None  # the key sent, valid or not: private functions check it

    @property
    def kind(self) -> str:
        return "API key" if self.by_key else "client address"


def bearer(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; an empty one is none."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def server_key(settings: Settings, key: str | None) -> str | None:
    """`key` if it is one of the server's (compared in constant time), else None."""
    if not key:
        return None
    given = key.encode()
    return key if any(hmac.compare_digest(given, k.encode()) for k in settings.api_keys) \
        else None


def caller_of(settings: Settings, presented: str | None, address: str) -> Caller:
    key = server_key(settings, presented)
    if key is not None:
        return Caller("key:" + hashlib.sha256(key.encode()).hexdigest()[:32], True, presented)
    return Caller("addr:" + (address or "unknown"), False, presented)


def read_caller(settings: Settings, scope: dict[str, Any]) -> Caller:
    """The caller of an ASGI request, from its Authorization header and address."""
    authorization = ""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            authorization = value.decode("latin-1")
            break
    return caller_of(settings, bearer(authorization), (scope.get("client") or ("",))[0])


def caller() -> Caller:
    """The current request's caller, as api/bounds.py read it."""
    return request.scope[SCOPE_KEY]
