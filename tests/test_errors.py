"""Domain errors and their HTTP replies: one table in api/errors.py, nothing of
HTTP in the shared layer, and no error without its status."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from tests.support import SyncClient
from wasmq.api.errors import HTTP_REPLIES, http_reply
from wasmq.broker import errors
from wasmq.broker.errors import RateLimited, Unauthorized, WasmqError

pytestmark = pytest.mark.fast

PACKAGES = ("wasmq", "wasmq.api", "wasmq.broker", "wasmq.workers", "wasmq.toolchain")


def every_module() -> None:
    """Import the whole package, so every subclass of WasmqError is defined."""
    for name in PACKAGES:
        package = importlib.import_module(name)
        for found in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not found.name.endswith("__main__"):
                importlib.import_module(found.name)


def subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


def test_every_error_of_the_shared_layer_has_its_own_line_in_the_http_table() -> None:
    defined = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, WasmqError) and cls.__module__ == errors.__name__]
    assert len(defined) >= 10
    missing = [cls.__name__ for cls in defined if cls not in HTTP_REPLIES]
    assert not missing, f"add these to HTTP_REPLIES in api/errors.py: {missing}"


def test_an_error_defined_elsewhere_answers_as_a_mapped_base_not_as_the_bare_500() -> None:
    every_module()
    unmapped = [f"{cls.__module__}.{cls.__name__}" for cls in subclasses(WasmqError)
                if not any(base in HTTP_REPLIES for base in cls.__mro__
                           if base is not WasmqError)]
    assert not unmapped, f"derive these from a mapped error, or map them: {unmapped}"


def test_the_shared_layer_knows_nothing_of_http() -> None:
    for cls in subclasses(WasmqError):
        assert not hasattr(cls, "http_status") and not hasattr(cls, "headers"), cls
    source = inspect.getsource(errors)
    for header in ("WWW-Authenticate", "Retry-After"):
        assert header not in source


def test_refusals_carry_their_data_and_the_table_turns_it_into_headers() -> None:
    refusal = RateLimited("too many", retry_after=7)
    assert refusal.retry_after == 7 and refusal.message == "too many"
    assert http_reply(refusal).status == 429
    assert http_reply(refusal).headers(refusal) == {"Retry-After": "7"}
    assert http_reply(Unauthorized("key")).headers(Unauthorized("key"))[
        "WWW-Authenticate"].startswith("Bearer")


def test_each_domain_error_raised_in_a_view_answers_its_status_headers_and_message(
        app) -> None:
    raised = {"unauthorized": Unauthorized("send a key"),
              "limited": RateLimited("slow down", retry_after=3),
              "bare": WasmqError("something of ours went wrong")}

    @app.get("/raise/<name>")
    def raise_it(name: str) -> None:
        raise raised[name]

    client = SyncClient(app)
    for name, exc in raised.items():
        response = client.get(f"/raise/{name}")
        reply = http_reply(exc)
        assert response.status_code == reply.status
        for header, value in reply.headers(exc).items():
            assert response.headers[header] == value
        body = response.get_json()
        assert body["statusCode"] == 0 and body["message"] == exc.message
