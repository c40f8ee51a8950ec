"""Access rules on a stack with API keys and a tight rate limit."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import redis
import requests
import urllib3

from tests import modules
from tests.conftest import Stack, start_stack
from tests.support import Api, envelope

ADMIN, OTHER, BURST = "admin-key", "other-key", "burst-key"
RATE = 8  # per minute


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("keyed"), redis_url, concurrency=1,
                    WASMQ_QUEUE="keyed", WASMQ_API_KEYS=f"{ADMIN}, {OTHER},{BURST}",
                    WASMQ_RATE_LIMIT=f"{RATE}/minute")
    yield s
    s.worker.stop()
    s.gateway.stop()


@pytest.fixture(scope="module")
def admin(keyed: Stack) -> Api:
    client = Api(keyed.url)
    client.http.headers.update(bearer(ADMIN))
    return client


@pytest.fixture(scope="module")
def private_fn(admin: Api) -> str:
    return admin.deploy(modules.ECHO, name="secret", private="true")


def test_uploading_needs_a_key(keyed: Stack) -> None:
    url, files = f"{keyed.url}/functions", {"file": ("m.wasm", modules.ECHO)}
    missing = requests.post(url, files=files)
    assert missing.status_code == 401
    assert missing.json()["statusCode"] == 0 and "Bearer" in missing.json()["message"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.post(url, files=files, headers=bearer("guess"))
    assert wrong.status_code == 403 and wrong.json()["statusCode"] == 0
    not_bearer = requests.post(url, files=files, headers={"Authorization": ADMIN})
    assert not_bearer.status_code == 401
    assert requests.post(url, files=files, headers=bearer(OTHER)).status_code == 201


def test_replacing_and_deleting_need_a_key(keyed: Stack, admin: Api) -> None:
    cfid = admin.deploy(modules.ECHO)
    url = f"{keyed.url}/functions/{cfid}"
    files = {"file": ("m.wasm", modules.NOT_JSON)}
    assert requests.put(url, files=files).status_code == 401
    assert requests.put(url, files=files, headers=bearer("guess")).status_code == 403
    assert requests.delete(url).status_code == 401
    assert requests.delete(url, headers=bearer("guess")).status_code == 403
    assert requests.get(url).json()["sha256"] == admin.http.get(url).json()["sha256"]
    replaced = requests.put(url, files=files, data={"private": "true", "timeout_s": "5"},
                            headers=bearer(ADMIN))
    assert replaced.status_code == 200
    assert replaced.json()["private"] is True and replaced.json()["limits"] == {"timeout_s": 5}
    assert requests.get(f"{keyed.url}/file/{cfid}.wasm").status_code == 401
    assert requests.delete(url, headers=bearer(ADMIN)).status_code == 204


def test_public_functions_are_called_without_a_key(keyed: Stack, admin: Api) -> None:
    cfid = admin.deploy(modules.ECHO, name="public")
    body = Api(keyed.url).call(cfid, "anyone").json()
    assert body["statusCode"] == 1 and body["result"] == "anyone"
    assert requests.get(f"{keyed.url}/retrieve/{body['tid']}").json()["result"] == "anyone"
    assert requests.get(f"{keyed.url}/file/{cfid}.wasm").content == modules.ECHO


def test_a_private_function_is_called_only_with_a_key(keyed: Stack, admin: Api,
                                                      private_fn: str) -> None:
    anonymous = Api(keyed.url)
    missing = anonymous.call(private_fn, "x")
    assert missing.status_code == 401 and missing.json()["statusCode"] == 0
    guesser = Api(keyed.url)
    guesser.http.headers.update(bearer("guess"))
    assert guesser.call(private_fn, "x").status_code == 403
    body = admin.call(private_fn, "with key").json()
    assert body["statusCode"] == 1 and body["result"] == "with key"


def test_a_private_function_is_downloaded_only_with_a_key(keyed: Stack,
                                                          private_fn: str) -> None:
    url = f"{keyed.url}/file/{private_fn}.wasm"
    assert requests.get(url).status_code == 401
    assert requests.get(url, headers=bearer("guess")).status_code == 403
    assert requests.get(url, headers=bearer(OTHER)).content == modules.ECHO


def test_results_of_a_private_function_are_retrieved_only_with_a_key(
        keyed: Stack, admin: Api, private_fn: str) -> None:
    tid = admin.call(private_fn, "confidential").json()["tid"]
    url = f"{keyed.url}/retrieve/{tid}"
    refused = requests.get(url)
    assert refused.status_code == 401
    assert "confidential" not in refused.text
    assert requests.get(url, headers=bearer("guess")).status_code == 403
    assert requests.get(url, headers=bearer(OTHER)).json()["result"] == "confidential"
    # Deleting the function does not make its results public.
    assert admin.http.delete(f"{keyed.url}/functions/{private_fn}").status_code == 204
    assert requests.get(url).status_code == 401


def test_private_needs_keys_on_the_server(api: Api) -> None:
    response = api.upload(modules.ECHO, private="true")
    assert response.status_code == 400
    assert "WASMQ_API_KEYS" in response.json()["message"]
    assert api.upload(modules.ECHO, private="perhaps").status_code == 400


def test_task_ids_carry_128_random_bits(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    tids = {api.call(cfid, "x", wait=0).json()["tid"] for _ in range(20)}
    assert len(tids) == 20
    assert all(re.fullmatch(r"wasmqt-[0-9a-f]{32}", tid) for tid in tids)


@pytest.fixture(scope="module")
def echo(admin: Api) -> str:
    return admin.deploy(modules.ECHO)


def _submit(url: str, cfid: str, key: str | None = None,
            source: str = "127.0.0.1") -> urllib3.HTTPResponse:
    host, port = url.removeprefix("http://").split(":")
    pool = urllib3.HTTPConnectionPool(host, int(port), source_address=(source, 0))
    headers = {"Content-Type": "application/json", **(bearer(key) if key else {})}
    return pool.request("POST", f"/task/{cfid}?wait=0",
                        body=json.dumps(envelope("x")), headers=headers)


def test_submissions_are_rate_limited_per_key_with_retry_after(keyed: Stack,
                                                               echo: str) -> None:
    answers = [_submit(keyed.url, echo, BURST) for _ in range(RATE)]
    assert [a.status for a in answers] == [202] * RATE
    limited = _submit(keyed.url, echo, BURST)
    assert limited.status == 429
    body = json.loads(limited.data)
    assert body["statusCode"] == 0 and "rate limit" in body["message"]
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert _submit(keyed.url, echo, OTHER).status == 202  # another key: its own allowance


def test_submissions_without_a_key_are_rate_limited_per_address(keyed: Stack,
                                                               echo: str) -> None:
    # 127.0.0.2 is a loopback address of its own, so this test's count is its own.
    for _ in range(RATE):
        assert _submit(keyed.url, echo, source="127.0.0.2").status == 202
    assert _submit(keyed.url, echo, source="127.0.0.2").status == 429
    # An unknown key does not buy a fresh allowance: it counts against the address.
    assert _submit(keyed.url, echo, "made-up", source="127.0.0.2").status == 429


def test_rate_limit_counters_live_in_the_same_redis(keyed: Stack, echo: str) -> None:
    _submit(keyed.url, echo, OTHER)
    client = redis.Redis.from_url(keyed.redis_url)
    assert any(client.scan_iter(match="*wasmq:ratelimit*"))
