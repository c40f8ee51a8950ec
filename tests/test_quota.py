"""Storage per caller (WASMQ_STORAGE_PER_CALLER_MB): one caller cannot fill the store for
everyone. A tiny module answering 2 MB per call, called again and again by one API key,
is refused once the key keeps its quota; another key's calls go on. Real stack."""

from __future__ import annotations

from tests import hostile, modules
from wasmq.api.caller import caller_of
from wasmq.broker.settings import Settings
from wasmq.broker.usage import Usage

FLOODER, BYSTANDER = "quota-flooder-key", "quota-bystander-key"


def _call(api, cfid: str, data: str, key: str, wait: float = 20):
    api.http.headers["Authorization"] = f"Bearer {key}"
    return api.call(cfid, data, wait=wait)


def test_a_caller_that_fills_its_storage_quota_is_refused_and_others_go_on(private) -> None:
    stack = private(WASMQ_STORAGE_PER_CALLER_MB="8", WASMQ_API_KEYS=f"{FLOODER},{BYSTANDER}",
                    WASMQ_MAX_BATCH="1")
    stack.start_worker("a", concurrency=1)
    api = stack.api()
    api.http.headers["Authorization"] = f"Bearer {FLOODER}"
    big = api.deploy(hostile.OUTPUT_TOO_LARGE, name="two-megabytes")
    echo = api.deploy(modules.ECHO, name="echo")
    answers = [_call(api, big, "x", FLOODER) for _ in range(8)]
    done = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 507]
    assert 3 <= len(done) <= 4 and len(refused) == 8 - len(done), \
        [a.status_code for a in answers]  # 2 MB each against 8 MB
    message = refused[0].json()["message"]
    assert refused[0].json()["statusCode"] == 0
    assert "storage quota" in message and "WASMQ_STORAGE_PER_CALLER_MB" in message
    assert "8 MB" in message
    # Every result it was given is still there, and another caller is served.
    for answer in done:
        assert len(api.retrieve(answer.json()["tid"]).json()["result"]) == 2 * 1024 * 1024
    other = _call(api, echo, "still served", BYSTANDER).json()
    assert other["statusCode"] == 1 and other["result"] == "still served"
    flooder = caller_of(Settings(api_keys=(FLOODER,)), FLOODER, "127.0.0.1").identity
    kept = Usage(Settings().result_ttl).kept(stack.client(), flooder)
    assert 6 * 2**20 <= kept <= 9 * 2**20, kept


def test_uploads_count_in_the_uploader_s_quota_and_are_refused_past_it(private) -> None:
    stack = private(WASMQ_STORAGE_PER_CALLER_MB="1", WASMQ_API_KEYS=f"{FLOODER},{BYSTANDER}")
    api = stack.api()
    api.http.headers["Authorization"] = f"Bearer {FLOODER}"
    padded = modules.wasm(data=f'(data (i32.const 4096) "{"x" * 200_000}")', pages=8)
    codes = [api.upload(modules.variant(padded), f"fill-{i}").status_code for i in range(5)]
    assert codes[:2] == [201, 201] and codes[-1] == 507, codes  # 2 x 200 KB each, of 1 MB
    refused = api.upload(modules.variant(padded), "one-more")
    assert "storage quota" in refused.json()["message"]
    api.http.headers["Authorization"] = f"Bearer {BYSTANDER}"
    assert api.upload(modules.variant(padded), "bystander's").status_code == 201
    # An upload over the quota by itself: no wait helps, the message says what would.
    huge = modules.wasm(data=f'(data (i32.const 4096) "{"x" * 1_200_000}")', pages=32)
    alone = api.upload(modules.variant(huge), "huge")
    assert alone.status_code == 507, alone.json()
    assert "alone is over the storage quota of 1 MB" in alone.json()["message"]
    assert "WASMQ_STORAGE_PER_CALLER_MB" in alone.json()["message"]
