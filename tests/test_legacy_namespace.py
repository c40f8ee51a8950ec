"""A module built against the old `wasi_unstable` namespace, through the queue."""

from __future__ import annotations

from pathlib import Path

import wasmtime

from tests.support import Api

LEGACY = wasmtime.wat2wasm((Path(__file__).parent / "wasm" / "legacy.wat").read_text())


def test_a_wasi_unstable_module_is_accepted_and_runs(api: Api) -> None:
    response = api.upload(LEGACY, name="legacy")
    assert response.status_code == 201, response.text
    assert "wasi_unstable.fd_write" in response.json()["imports"]
    body = api.call(response.json()["cfid"], "shout this").json()
    assert body["statusCode"] == 1, body
    assert body["result"] == "SHOUT THIS"
    assert "hello from wasi_unstable" in body["logs"]["stdout"]
