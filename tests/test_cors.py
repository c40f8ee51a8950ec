"""CORS, seen from a browser: a page on another origin fetches the binary and
runs it with WebAssembly through the ABI, and calls /task and /retrieve."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests import modules
from tests.support import INTSUM, ROOT, TUTORIAL_INPUT, Api

ANSWER = '{"output": [55]}'


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_origin() -> Iterator[str]:
    """A second loopback HTTP server (another port, so another origin) serving
    tests/browser: a blank page and the test's JavaScript ABI runner."""
    handler = functools.partial(_Quiet, directory=str(ROOT / "tests" / "browser"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def foreign_page(page: Any, other_origin: str) -> Any:
    page.goto(f"{other_origin}/crossorigin.html")
    return page


def test_a_page_on_another_origin_runs_the_downloaded_binary_with_webassembly(
        api: Api, foreign_page: Any) -> None:
    cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
    ran = foreign_page.evaluate("([url, input]) => runScailable(url, input)",
                                [f"{api.url}/file/{cfid}.wasm", TUTORIAL_INPUT])
    assert ran["output"] == ANSWER
    assert ran["output"] == api.call(cfid, TUTORIAL_INPUT).json()["result"]


def test_a_page_on_another_origin_calls_task_and_follows_retrieve(
        api: Api, foreign_page: Any) -> None:
    intsum = api.deploy(INTSUM.read_bytes(), name="intsum")
    slow = api.deploy(modules.SLOW, name="slow")
    script = """async ([api, intsum, slow, input]) => {
      const envelope = (data) => JSON.stringify({input: {"content-type": "json",
        location: "embedded", data}, output: {"content-type": "json", location: "echo"},
        control: 1, properties: {language: "WASM"}});
      // JSON with an Authorization header: a preflighted request.
      const post = (cfid, data, wait) => fetch(`${api}/task/${cfid}?wait=${wait}`, {
        method: "POST", body: envelope(data),
        headers: {"Content-Type": "application/json", Authorization: "Bearer none"}});
      const direct = await (await post(intsum, input, 10)).json();
      let reply = await (await post(slow, "400", 0)).json();
      const first = reply.statusCode;
      while (reply.statusCode === 5) {
        await new Promise((r) => setTimeout(r, 100));
        reply = await (await fetch(reply.resultUrl)).json();
      }
      return {direct: direct.result, first, followed: reply.result};
    }"""
    got = foreign_page.evaluate(script, [api.url, intsum, slow, TUTORIAL_INPUT])
    assert got == {"direct": ANSWER, "first": 5, "followed": "400"}


def test_routes_without_cors_stay_closed_to_other_origins(api: Api,
                                                          foreign_page: Any) -> None:
    """The control: the cross-origin setup really crosses origins, and only
    /task, /retrieve and /file are opened."""
    outcome = foreign_page.evaluate("""async (api) => {
      try { await fetch(`${api}/functions`); return "readable"; }
      catch (err) { return err.name; }
    }""", api.url)
    assert outcome == "TypeError"
