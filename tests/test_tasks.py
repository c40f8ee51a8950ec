"""Calling functions: every statusCode path of the Scailable contract."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests

from tests import modules
from tests.support import INTSUM, TUTORIAL_INPUT, Api


def test_tutorial_call_answers_statuscode_1_with_55(api: Api) -> None:
    cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
    response = api.call(cfid, TUTORIAL_INPUT)
    assert response.status_code == 200
    body = response.json()
    assert body["statusCode"] == 1
    assert body["result"] == '{"output": [55]}'
    assert body["timeOut"] is False
    assert body["resultUrl"] == f"{api.url}/retrieve/{body['tid']}"
    assert body["message"]


def test_retrieve_returns_the_same_result_later(api: Api) -> None:
    cfid = api.deploy(INTSUM.read_bytes())
    tid = api.call(cfid, "[5,6]").json()["tid"]
    body = api.retrieve(tid).json()
    assert body["statusCode"] == 1 and body["result"] == '{"output": [11]}'
    assert body["tid"] == tid


def test_slow_call_answers_5_with_a_result_url_that_later_gives_the_result(api: Api) -> None:
    cfid = api.deploy(modules.SLOW, name="slow")
    response = api.call(cfid, "1500", wait=0.2)
    assert response.status_code == 202
    body = response.json()
    assert body["statusCode"] == 5 and body["timeOut"] is True
    assert body["resultUrl"].startswith("http://")
    pending = requests.get(body["resultUrl"])
    assert pending.status_code == 202 and pending.json()["statusCode"] == 5
    final = api.poll(body["tid"])
    assert final["statusCode"] == 1 and final["result"] == "1500"
    assert final["timeOut"] is False


def test_wait_zero_answers_at_once_with_5(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    body = api.call(cfid, "quick", wait=0).json()
    assert body["statusCode"] == 5
    assert api.poll(body["tid"])["result"] == "quick"


def test_unknown_cfid_answers_404_with_statuscode_0(api: Api) -> None:
    response = api.call("00000000-0000-0000-0000-000000000000", "x")
    assert response.status_code == 404
    body = response.json()
    assert body["statusCode"] == 0 and "00000000-0000" in body["message"]
    assert set(body) >= {"statusCode", "result", "tid", "message", "timeOut", "resultUrl"}


def test_broken_envelopes_answer_400_naming_the_problem(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    cases = {
        "{not json": "not valid JSON",
        "[1,2]": "must be a JSON object",
        '{"input": 5}': "'input' must be an object",
        '{"input": {}}': "input.data",
        '{"input": {"data": 7}}': "must be a string",
        "": "empty request body",
    }
    for raw, expected in cases.items():
        response = requests.post(f"{api.url}/task/{cfid}", data=raw)
        assert response.status_code == 400, raw
        body = response.json()
        assert body["statusCode"] == 0 and expected in body["message"], (raw, body)


def test_bad_wait_values_answer_400(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    for wait in ("soon", "-1", "nan", "100000"):
        response = api.call(cfid, "x", wait=wait)  # type: ignore[arg-type]
        assert response.status_code == 400, wait
        assert "wait" in response.json()["message"]


def test_pred_returning_nonzero_fails_the_task_with_a_message(api: Api) -> None:
    cfid = api.deploy(modules.FAILING_PRED)
    body = api.call(cfid, "x").json()
    assert body["statusCode"] == 0
    assert "pred() returned 1" in body["message"]
    assert api.retrieve(body["tid"]).json()["statusCode"] == 0


def test_a_trap_fails_the_task_and_names_it(api: Api) -> None:
    cfid = api.deploy(modules.TRAPPING)
    body = api.call(cfid, "x").json()
    assert body["statusCode"] == 0
    assert "unreachable" in body["message"] and "pred" in body["message"]


def test_output_that_is_not_json_is_returned_as_written(api: Api) -> None:
    cfid = api.deploy(modules.NOT_JSON)
    assert api.call(cfid, "ignored").json()["result"] == modules.NOT_JSON_TEXT


def test_input_reaches_the_module_byte_for_byte(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    data = 'ünïcødé "quotes" \\ back\\slash\n{"not": parsed}'
    assert api.call(cfid, data).json()["result"] == data


def test_json_content_type_is_accepted_too(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    from tests.support import envelope

    response = requests.post(f"{api.url}/task/{cfid}", json=envelope("as json"))
    assert response.json()["result"] == "as json"


def test_an_input_of_several_megabytes_round_trips(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    data = "0123456789abcdef" * (4 * 1024 * 1024 // 16)
    body = api.call(cfid, data).json()
    assert body["statusCode"] == 1
    assert len(body["result"]) == len(data) and body["result"] == data


def test_100_concurrent_calls_are_all_answered_right(api: Api) -> None:
    cfid = api.deploy(INTSUM.read_bytes())

    def one(i: int) -> tuple[int, dict]:
        return i, api.call(cfid, json.dumps({"input": [[i, i, 1]]}), timeout=120).json()

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, range(100)))
    tids = set()
    for i, body in results:
        if body["statusCode"] == 5:
            body = api.poll(body["tid"], timeout=60)
        assert body["statusCode"] == 1, body
        assert body["result"] == f'{{"output": [{2 * i + 1}]}}'
        tids.add(body["tid"])
    assert len(tids) == 100


def test_retrieve_of_an_unknown_tid_is_404(api: Api) -> None:
    response = api.retrieve("wasmqt-doesnotexist")
    assert response.status_code == 404
    assert response.json()["statusCode"] == 0


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    missing = requests.get(f"{api.url}/nope")
    assert missing.status_code == 404 and missing.json()["statusCode"] == 0
    wrong = requests.delete(f"{api.url}/task/abc")
    assert wrong.status_code == 405 and wrong.json()["statusCode"] == 0


def test_a_wasi_import_with_the_wrong_signature_fails_with_a_linking_message(api: Api) -> None:
    wasm = modules.wasm(imports='(import "wasi_snapshot_preview1" "fd_write" '
                                '(func (param i64)))')
    cfid = api.deploy(wasm)
    body = api.call(cfid, "x").json()
    assert body["statusCode"] == 0
    assert "cannot be linked against WASI" in body["message"]
    assert api.call(api.deploy(modules.ECHO), "after").json()["result"] == "after"
