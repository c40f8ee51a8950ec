"""`/healthz` and the OpenAPI document."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import requests

from tests.support import Api, SyncClient
from wasmq.api.app import create_app


def test_healthz_reports_redis_reachable(api: Api) -> None:
    body = requests.get(f"{api.url}/healthz").json()
    assert body == {"status": "ok", "redis": True}


def test_openapi_describes_every_route(api: Api) -> None:
    doc = requests.get(f"{api.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert set(paths["/functions"]) >= {"get", "post"}
    assert set(paths["/functions/{cfid}"]) >= {"get", "put", "delete"}
    for path in ("/task/{cfid}", "/retrieve/{tid}", "/file/{cfid}.wasm", "/healthz",
                 "/openapi.json"):
        assert path in paths


@pytest.mark.fast
def test_openapi_asks_for_a_key_only_when_the_server_has_keys(client, settings) -> None:
    open_doc = client.get("/openapi.json").get_json()
    assert "security" not in json.dumps(open_doc) and "securitySchemes" not in json.dumps(open_doc)
    keyed = SyncClient(create_app(replace(settings, api_keys=("k",))))
    doc = keyed.get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert doc["paths"]["/functions"]["post"]["security"] == [{"apiKey": []}]
    assert {"security"} | set(doc["paths"]["/functions"]["post"]) == set(
        open_doc["paths"]["/functions"]["post"]) | {"security"}
