"""A built model in Chromium: the browser's own WebAssembly runs the module through the
ABI (tests/browser/scailable_runner.js) and answers as wasmq's worker does."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from bench.model import resnet20
from tests.model_runner import MAX_BYTES, run_wasm
from tests.support import ROOT
from wasmq.toolchain.model import build_model


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_a_built_resnet_runs_in_chromium_with_the_same_answer(page: Any,
                                                              tmp_path: Path) -> None:
    built = build_model(resnet20(seed=2).SerializeToString(), max_bytes=MAX_BYTES)
    for name in ("crossorigin.html", "scailable_runner.js"):
        shutil.copy(ROOT / "tests" / "browser" / name, tmp_path / name)
    (tmp_path / "model.wasm").write_bytes(built.wasm)
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        page.goto(f"{url}/crossorigin.html")
        image = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
        body = json.dumps({"input": base64.b64encode(image.tobytes()).decode(),
                           "type": "raw"})
        ran = page.evaluate("([url, input]) => runScailable(url, input)",
                            [f"{url}/model.wasm", body])
        worker = run_wasm(built.wasm, body.encode()).output.decode()
        got, want = json.loads(ran["output"]), json.loads(worker)
        # the same kernels; the browser may or may not fuse the relaxed multiply-adds
        np.testing.assert_allclose(got["output"], want["output"], rtol=1e-4, atol=1e-4)
        assert np.argmax(got["output"]) == np.argmax(want["output"])
        bad = page.evaluate("([url, input]) => runScailable(url, input).catch(e => e.message)",
                            [f"{url}/model.wasm", '{"input": [1, 2]}'])
        assert bad == "pred() returned 1"
    finally:
        server.shutdown()
        server.server_close()
