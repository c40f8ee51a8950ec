"""The web console in a real browser (Debian's Chromium through Playwright):
the tutorial done by hand — upload, see it listed, try it, copy a snippet."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from dataclasses import replace
from typing import Any

import requests

from tests import modules
from tests.support import INTSUM, TUTORIAL_INPUT, Api, serve, upload
from wasmq.api.app import create_app
from wasmq.broker.settings import Settings

ANSWER = '{"output": [55]}'


def test_the_tutorial_in_the_browser_upload_list_run_and_copy_curl(api: Api,
                                                                   page: Any) -> None:
    name = f"intsum-{uuid.uuid4().hex[:8]}"
    page.goto(f"{api.url}/upload.html")
    page.set_input_files("#file", str(INTSUM))
    page.fill("#name", name)
    page.fill("#documentation", "Adds up the integers in its input")
    page.fill("#exampleinput", TUTORIAL_INPUT)
    page.click("#submit")
    cfid = page.locator("#new-cfid").inner_text()
    assert requests.get(f"{api.url}/functions/{cfid}", timeout=10).json()["name"] == name

    page.goto(f"{api.url}/")
    row = page.locator(f'tr[data-cfid="{cfid}"]')
    assert row.locator(".fn-name").inner_text() == name
    assert "10.2 KiB" in row.inner_text()
    assert row.locator("code.example").inner_text() == TUTORIAL_INPUT

    row.locator(".fn-name").click()
    page.wait_for_url(re.compile(r"/run\.html\?"))
    assert page.input_value("#input") == TUTORIAL_INPUT
    page.click("#run")
    page.wait_for_selector("#status-code.code-1")
    assert page.inner_text("#result") == ANSWER
    assert re.fullmatch(r"\d+ ms", page.inner_text("#elapsed"))
    assert page.inner_text("#tid").startswith("wasmqt-")

    curl = page.inner_text("#snippet-curl")
    assert f"{api.url}/task/{cfid}" in curl
    shell = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    reply = json.loads(shell.stdout)
    assert reply["statusCode"] == 1 and reply["result"] == ANSWER


def test_the_python_and_fetch_snippets_give_the_same_answer(api: Api, page: Any) -> None:
    cfid = api.deploy(INTSUM.read_bytes(), name="intsum", exampleinput=TUTORIAL_INPUT)
    page.goto(f"{api.url}/run.html?cfid={cfid}")
    page.wait_for_selector("#snippets", state="visible")  # written once the record is read
    python = page.inner_text("#snippet-python")
    ran = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == f"1 {ANSWER}"
    fetch = page.inner_text("#snippet-fetch")
    logged = page.evaluate("async (code) => { const lines = [];"
                           " const console = { log: (...a) => lines.push(a.join(' ')) };"
                           " await eval(`(async () => { ${code} })()`); return lines; }",
                           fetch)
    assert logged == [f"1 {ANSWER}"]
    cli = page.inner_text("#snippet-cli")
    assert cli.startswith(f"wasmq run {cfid} ") and f"--url '{api.url}'" in cli


def test_the_download_link_serves_the_binary(api: Api, page: Any) -> None:
    cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
    page.goto(f"{api.url}/run.html?cfid={cfid}&exin=%5B1%5D")
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == f"{cfid}.wasm"
    with open(download.path(), "rb") as got:
        assert got.read() == INTSUM.read_bytes()


def test_a_refused_upload_shows_the_servers_message(api: Api, page: Any) -> None:
    page.goto(f"{api.url}/upload.html")
    page.set_input_files("#file", files=[{"name": "bad.wasm", "mimeType": "application/wasm",
                                          "buffer": b"\0asm\x01\0\0\0"}])
    page.click("#submit")
    message = page.locator("#upload-message").inner_text()
    assert "missing exports" in message and "malloc_buffer" in message
    assert "HTTP 400" in page.inner_text("#upload-result")


def test_a_slow_call_shows_progress_while_following_the_result_url(api: Api,
                                                                  page: Any) -> None:
    cfid = api.deploy(modules.SLOW, name="slow")
    page.goto(f"{api.url}/run.html?cfid={cfid}&exin=1500&wait=0")
    page.click("#run")
    page.wait_for_selector("#progress progress", state="visible")
    assert page.inner_text("#status-code") == "5"
    assert "/retrieve/wasmqt-" in page.get_attribute("#result-url", "href")
    page.wait_for_selector("#status-code.code-1")
    assert page.is_hidden("#progress")
    assert page.inner_text("#result") == "1500"
    assert "?wait=0" in page.inner_text("#snippet-curl")


def test_a_failing_call_shows_statuscode_0_and_why(api: Api, page: Any) -> None:
    cfid = api.deploy(modules.FAILING_PRED, name="failing")
    page.goto(f"{api.url}/run.html?cfid={cfid}&exin=x")
    page.click("#run")
    page.wait_for_selector("#status-code.code-0")
    assert "pred() returned 1" in page.inner_text("#message")


def test_an_unknown_cfid_says_so(api: Api, page: Any) -> None:
    page.goto(f"{api.url}/run.html?cfid=no-such-function")
    page.wait_for_selector("#run-status.error")
    assert "no compute function with cfid 'no-such-function'" in page.inner_text("#run-status")


def test_an_api_key_goes_into_the_snippets(api: Api, page: Any) -> None:
    cfid = api.deploy(modules.ECHO, name="echo")
    page.goto(f"{api.url}/run.html?cfid={cfid}&exin=hi")
    page.wait_for_selector("#snippets", state="visible")
    page.fill("#api-key", "k-123")
    page.press("#api-key", "Enter")
    assert "-H 'Authorization: Bearer k-123'" in page.inner_text("#snippet-curl")
    assert '"Authorization": "Bearer k-123"' in page.inner_text("#snippet-python")
    page.reload()  # kept in this browser
    assert page.input_value("#api-key") == "k-123"


def test_the_api_page_renders_the_openapi_document(api: Api, page: Any) -> None:
    page.goto(f"{api.url}/api.html")
    page.wait_for_selector(".opblock")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    spec = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    documented = {p.replace("\u200b", "") for p in paths}
    assert documented == set(spec["paths"])


def test_a_slow_calls_time_taken_is_the_tasks_own_not_the_polling(api: Api,
                                                                   page: Any) -> None:
    cfid = api.deploy(modules.SLOW, name="slow")
    page.goto(f"{api.url}/run.html?cfid={cfid}&exin=700&wait=0")
    page.click("#run")
    page.wait_for_selector("#status-code.code-1")
    shown = int(page.inner_text("#elapsed").removesuffix(" ms"))
    record = api.retrieve(page.inner_text("#tid")).json()
    assert abs(shown - record["timings"]["totalMs"]) <= 1, (shown, record["timings"])


# In-process gateway (no workers) for what the pages do before any task runs.

def test_the_upload_name_is_empty_and_a_nameless_upload_takes_the_files_name(
        live_app: str, page: Any) -> None:
    page.goto(f"{live_app}/upload.html")
    assert page.input_value("#name") == ""
    page.set_input_files("#file", str(INTSUM))
    assert page.get_attribute("#name", "placeholder") == "intsum"
    page.click("#submit")
    cfid = page.locator("#new-cfid").inner_text()
    assert requests.get(f"{live_app}/functions/{cfid}", timeout=10).json()["name"] == "intsum"


def test_the_console_takes_onnx_models_and_marks_them_in_the_list(
        live_app: str, client, page: Any) -> None:
    from tests.test_model_upload import mlp

    page.goto(f"{live_app}/upload.html")
    assert ".onnx" in page.get_attribute("#file", "accept").split(",")
    assert "ONNX model" in page.inner_text(".lead")
    module = upload(client, INTSUM.read_bytes(), name="intsum").get_json()["cfid"]
    model = upload(client, mlp(seed=7), name="mlp", filename="mlp.onnx")
    assert model.status_code == 202, model.get_json()
    page.goto(f"{live_app}/")
    page.wait_for_selector(f'tr[data-cfid="{module}"]')
    model_row = page.locator(f'tr[data-cfid="{model.get_json()["cfid"]}"]')
    assert model_row.locator("small.kind-model").inner_text() == "model"
    assert page.locator(f'tr[data-cfid="{module}"] small.kind-model').count() == 0


def test_an_unknown_cfid_shows_only_the_error(live_app: str, page: Any) -> None:
    page.goto(f"{live_app}/run.html?cfid=no-such-function")
    page.wait_for_selector("#run-status.error")
    assert "no compute function with cfid 'no-such-function'" in page.inner_text("#run-status")
    for part in ("#function", "#run-form", "#outcome", "#snippets"):
        assert page.is_hidden(part), part


def test_every_page_fits_a_390_px_phone(live_app: str, client, browser: Any) -> None:
    cfid = upload(client, INTSUM.read_bytes(), name="intsum",
                  exampleinput=TUTORIAL_INPUT).get_json()["cfid"]
    context = browser.new_context(viewport={"width": 390, "height": 844})
    phone = context.new_page()
    try:
        for path, ready in (("/", "#functions tr[data-cfid]"), ("/upload.html", "#submit"),
                            (f"/run.html?cfid={cfid}", "#snippet-cli"),
                            ("/api.html", ".opblock")):
            phone.goto(live_app + path)
            phone.wait_for_selector(ready)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide"
            key = phone.locator("#api-key").bounding_box()
            assert key["x"] + key["width"] <= 390, f"the key box sticks out on {path}"
            if path == "/":
                assert phone.locator(f'tr[data-cfid="{cfid}"] .fn-name').is_visible()
    finally:
        context.close()


def test_the_api_page_shows_locks_only_when_the_server_has_keys(
        app, settings: Settings, page: Any) -> None:
    for keys, locked in (((), False), (("k-1",), True)):
        with serve(create_app(replace(settings, api_keys=keys))) as url:
            page.goto(f"{url}/api.html")
            page.wait_for_selector(".opblock")
            assert (page.locator(".authorization__btn").count() > 0) is locked, keys
            assert (page.locator(".btn.authorize").count() > 0) is locked, keys


def test_a_model_uploaded_in_the_browser_is_followed_until_built_or_failed(
        api: Api, page: Any, tmp_path: Any) -> None:
    from tests.test_model_upload import mlp, odd

    good, bad = tmp_path / "mlp.onnx", tmp_path / "odd.onnx"
    good.write_bytes(mlp(seed=6))
    bad.write_bytes(odd())
    page.goto(f"{api.url}/upload.html")
    page.set_input_files("#file", str(good))
    page.click("#submit")
    page.wait_for_selector("#try-it", timeout=60_000)  # shown once the build is ready
    cfid = page.locator("#new-cfid").inner_text()
    record = requests.get(f"{api.url}/functions/{cfid}", timeout=10).json()
    assert record["status"] == "ready" and record["name"] == "mlp"

    page.set_input_files("#file", str(bad))
    page.click("#submit")
    message = page.wait_for_selector("#upload-message", timeout=60_000).inner_text()
    assert "Frobnicate" in message and "com.example" in message
    page.goto(f"{api.url}/")
    failed = page.locator("tr", has=page.locator("small.build-failed")).first
    assert "build failed" in failed.inner_text()
