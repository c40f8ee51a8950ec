"""The function registry over HTTP: upload, list, show, replace, delete, download."""

from __future__ import annotations

import hashlib

import requests

from tests import modules
from tests.support import INTSUM, Api

RECORD_FIELDS = {"cfid", "name", "documentation", "exampleinput", "sha256", "size",
                 "imports", "exports", "createdAt", "updatedAt"}


def test_upload_answers_201_with_the_function_record(api: Api) -> None:
    wasm = INTSUM.read_bytes()
    response = api.upload(wasm, name="intsum", documentation="sums integers",
                          exampleinput="[1,2,3]")
    assert response.status_code == 201
    record = response.json()
    assert RECORD_FIELDS <= set(record)
    assert record["name"] == "intsum"
    assert record["documentation"] == "sums integers"
    assert record["exampleinput"] == "[1,2,3]"
    assert record["sha256"] == hashlib.sha256(wasm).hexdigest()
    assert record["size"] == len(wasm)
    assert "pred" in record["exports"] and "memory" in record["exports"]
    assert record["imports"] and all(i.startswith("wasi_snapshot_preview1.")
                                     for i in record["imports"])


def test_list_is_newest_first_with_total_and_paging(api: Api) -> None:
    cfids = [api.deploy(modules.ECHO, name=f"list-{i}") for i in range(3)]
    page = requests.get(f"{api.url}/functions", params={"limit": 2}).json()
    assert page["total"] >= 3
    assert [f["cfid"] for f in page["functions"]] == cfids[::-1][:2]
    next_page = requests.get(f"{api.url}/functions", params={"offset": 2, "limit": 1}).json()
    assert next_page["functions"][0]["cfid"] == cfids[0]


def test_list_rejects_bad_paging_values(api: Api) -> None:
    for params in ({"limit": "x"}, {"limit": 0}, {"offset": -1}):
        response = requests.get(f"{api.url}/functions", params=params)
        assert response.status_code == 400
        assert response.json()["statusCode"] == 0


def test_show_returns_the_record_and_unknown_cfid_is_404(api: Api) -> None:
    cfid = api.deploy(modules.ECHO, name="shown")
    assert requests.get(f"{api.url}/functions/{cfid}").json()["name"] == "shown"
    missing = requests.get(f"{api.url}/functions/not-a-cfid")
    assert missing.status_code == 404
    body = missing.json()
    assert body["statusCode"] == 0 and "not-a-cfid" in body["message"]


def test_download_returns_the_exact_binary_as_application_wasm(api: Api) -> None:
    wasm = INTSUM.read_bytes()
    cfid = api.deploy(wasm)
    response = requests.get(f"{api.url}/file/{cfid}.wasm")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/wasm"
    assert response.content == wasm
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_put_replaces_the_binary_under_the_same_cfid(api: Api) -> None:
    cfid = api.deploy(modules.ECHO, name="replace-me")
    assert api.call(cfid, "abc").json()["result"] == "abc"
    response = requests.put(f"{api.url}/functions/{cfid}",
                            files={"file": ("m.wasm", INTSUM.read_bytes())})
    assert response.status_code == 200
    record = response.json()
    assert record["cfid"] == cfid and record["name"] == "replace-me"
    assert record["sha256"] == hashlib.sha256(INTSUM.read_bytes()).hexdigest()
    assert api.call(cfid, "[1,2]").json()["result"] == '{"output": [3]}'


def test_put_with_a_broken_module_keeps_the_old_one(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    response = requests.put(f"{api.url}/functions/{cfid}", files={"file": ("m", b"junk")})
    assert response.status_code == 400
    assert api.call(cfid, "still here").json()["result"] == "still here"


def test_delete_answers_204_then_the_function_is_gone(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    assert api.call(cfid, "known").json()["result"] == "known"  # the gateway has seen it
    assert requests.delete(f"{api.url}/functions/{cfid}").status_code == 204
    assert api.call(cfid, "gone").status_code == 404
    assert requests.get(f"{api.url}/functions/{cfid}").status_code == 404
    assert requests.get(f"{api.url}/file/{cfid}.wasm").status_code == 404
    assert requests.delete(f"{api.url}/functions/{cfid}").status_code == 404


def test_deleting_one_of_two_identical_uploads_keeps_the_other_working(api: Api) -> None:
    first, second = api.deploy(modules.ECHO), api.deploy(modules.ECHO)
    requests.delete(f"{api.url}/functions/{first}")
    assert requests.get(f"{api.url}/file/{second}.wasm").content == modules.ECHO


def test_upload_refuses_bytes_that_are_not_wasm(api: Api) -> None:
    response = api.upload(b"MZ\x90\x00 not a module")
    assert response.status_code == 400
    body = response.json()
    assert body["statusCode"] == 0
    assert "expected a WebAssembly module (a .wasm, starting with \\0asm) or an ONNX model" \
        in body["message"]


def test_upload_refuses_a_truncated_module(api: Api) -> None:
    response = api.upload(modules.ECHO[: len(modules.ECHO) // 2])
    assert response.status_code == 400
    assert "not a valid WebAssembly module" in response.json()["message"]


def test_upload_names_missing_exports(api: Api) -> None:
    import wasmtime

    wasm = wasmtime.wat2wasm('(module (memory (export "memory") 1) '
                             '(func (export "_start")) (func (export "pred") (result i32) '
                             'i32.const 0))')
    message = api.upload(wasm).json()["message"]
    for name in ("malloc_buffer", "free_buffer", "get_out_len", "get_out_loc"):
        assert name in message


def test_upload_names_wrong_signatures(api: Api) -> None:
    import wasmtime

    bad = wasmtime.wat2wasm(modules.wat().replace(
        '(func (export "pred") (result i32)', '(func (export "pred") (param i64) (result i32)'))
    message = api.upload(bad).json()["message"]
    assert "'pred' has signature (i64) -> (i32), expected () -> (i32)" in message


def test_upload_names_foreign_imports(api: Api) -> None:
    wasm = modules.wasm(imports='(import "env" "host_secret" (func (result i32)))')
    response = api.upload(wasm)
    assert response.status_code == 400
    assert "env.host_secret" in response.json()["message"]


def test_upload_without_a_file_field_says_so(api: Api) -> None:
    response = requests.post(f"{api.url}/functions", data={"name": "x"})
    assert response.status_code == 400
    assert "'file'" in response.json()["message"]


def test_an_upload_with_unbounded_exports_is_refused_naming_the_bound(api: Api) -> None:
    """A record's export list is bounded like a model's fields (issue 22, point 5): a
    module of 600 exports, or one export named with 100,000 characters, was stored whole
    and listed by GET /functions every time."""
    import wasmtime

    from wasmq.broker import abi

    many = "".join(f'(func (export "f{i}"))' for i in range(abi.MAX_EXPORTS + 88))
    response = api.upload(wasmtime.wat2wasm(modules.wat(extra=many)))
    assert response.status_code == 400
    message = response.json()["message"]
    assert f"it has {abi.MAX_EXPORTS + 88 + 7} exports; at most {abi.MAX_EXPORTS}" in message
    long = "x" * 100_000
    response = api.upload(wasmtime.wat2wasm(modules.wat(extra=f'(func (export "{long}"))')))
    assert response.status_code == 400
    message = response.json()["message"]
    assert "exports with names longer than 256 characters: xxx" in message
    assert "(100000 characters)" in message and len(message) < 1000
    fine = "".join(f'(func (export "f{i}"))' for i in range(100))
    record = api.upload(wasmtime.wat2wasm(modules.wat(extra=fine))).json()
    assert len(record["exports"]) == 107
