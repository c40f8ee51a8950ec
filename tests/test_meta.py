"""`/healthz` and the OpenAPI document."""

from __future__ import annotations

import requests

from tests.support import Api


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
