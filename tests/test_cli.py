"""The `wasmq` command line against a live `wasmq up`, as a script would use it:
stdout, stderr and exit codes (0 done, 1 failed, 2 usage/connection, 3 pending)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests import modules
from tests.conftest import Recorder
from tests.support import INTSUM, ROOT, TUTORIAL_INPUT, child_env, upload, wait_until
from wasmq.broker.redis_server import free_port


def wasmq(url: str, *args: str, stdin: bytes | None = None,
          **env: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI in a child process; WASMQ_URL points it at the live gateway."""
    return subprocess.run([sys.executable, "-m", "wasmq", *args], cwd=ROOT,
                          env=child_env(**({"WASMQ_URL": url} | env)), input=stdin,
                          capture_output=True, timeout=120)


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def deploy(url: str, wasm: bytes | Path, tmp_path: Path, name: str, *extra: str) -> str:
    path = wasm if isinstance(wasm, Path) else tmp_path / f"{name}.wasm"
    if not isinstance(wasm, Path):
        path.write_bytes(wasm)
    result = wasmq(url, "deploy", str(path), "--name", name, *extra)
    assert result.returncode == 0, err(result)
    return out(result).strip()


@pytest.fixture(scope="module")
def intsum(up: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return deploy(up, INTSUM, tmp_path_factory.mktemp("cli"), "intsum-cli",
                  "--example", TUTORIAL_INPUT, "--doc", "adds up integers")


def test_deploy_prints_the_cfid_and_where_to_try_it(up: str, intsum: str) -> None:
    assert len(intsum) == 36 and intsum.count("-") == 4
    shown = wasmq(up, "show", intsum, "--json")
    record = json.loads(out(shown))
    assert record["cfid"] == intsum and record["name"] == "intsum-cli"
    assert record["exampleinput"] == TUTORIAL_INPUT


def test_run_prints_the_result_byte_for_byte(up: str, intsum: str) -> None:
    result = wasmq(up, "run", intsum, TUTORIAL_INPUT)
    assert result.returncode == 0, err(result)
    assert result.stdout == b'{"output": [55]}'
    assert err(result) == ""  # no spinner when stderr is not a terminal


def test_run_reads_data_from_stdin_or_a_file(up: str, intsum: str, tmp_path: Path) -> None:
    assert wasmq(up, "run", intsum, "-", stdin=b"[1,2,3]").stdout == b'{"output": [6]}'
    data = tmp_path / "input.json"
    data.write_bytes(b"[10, 20]")
    assert wasmq(up, "run", intsum, f"@{data}").stdout == b'{"output": [30]}'
    missing = wasmq(up, "run", intsum, f"@{tmp_path / 'nope'}")
    assert missing.returncode == 2 and "cannot read" in err(missing)


def test_run_json_prints_the_whole_reply(up: str, intsum: str) -> None:
    reply = json.loads(out(wasmq(up, "run", intsum, "[4,5]", "--json")))
    assert reply["statusCode"] == 1 and reply["result"] == '{"output": [9]}'
    assert reply["resultUrl"].startswith(up)


def test_run_follows_the_result_url_after_statuscode_5(up: str, tmp_path: Path) -> None:
    slow = deploy(up, modules.SLOW, tmp_path, "slow")
    result = wasmq(up, "run", slow, "1200", "--wait", "0")
    assert result.returncode == 0, err(result)
    assert result.stdout == b"1200"


def test_a_task_still_running_at_the_timeout_exits_3_and_result_fetches_it(
        up: str, tmp_path: Path) -> None:
    slow = deploy(up, modules.SLOW, tmp_path, "slow")
    pending = wasmq(up, "run", slow, "2000", "--wait", "0", "--timeout", "0.2", "--json")
    assert pending.returncode == 3, err(pending)
    reply = json.loads(out(pending))
    assert reply["statusCode"] == 5
    assert f"wasmq result {reply['tid']}" in err(pending)
    later = wasmq(up, "result", reply["tid"], "--wait", "30")
    assert later.returncode == 0, err(later)
    assert later.stdout == b"2000"


def test_a_failed_task_exits_1_with_the_servers_message(up: str, tmp_path: Path) -> None:
    failing = deploy(up, modules.FAILING_PRED, tmp_path, "failing")
    result = wasmq(up, "run", failing, "x")
    assert result.returncode == 1
    assert result.stdout == b""
    assert "failed" in err(result) and "pred() returned 1" in err(result)
    as_json = wasmq(up, "run", failing, "x", "--json")
    assert as_json.returncode == 1
    assert json.loads(out(as_json))["statusCode"] == 0


def test_a_failed_model_task_says_the_modules_stderr_once(up: str, tmp_path: Path) -> None:
    from tests.test_model_upload import mlp

    model = tmp_path / "mlp.onnx"
    model.write_bytes(mlp(seed=8))
    cfid = out(wasmq(up, "deploy", str(model))).strip()
    result = wasmq(up, "run", cfid, '{"input": [[1, 2, 3]]}')
    assert result.returncode == 1
    said = err(result)
    assert "pred() returned 1 (failure)" in said and "module stderr (last lines):" in said
    assert said.count("got 3 values, the model expects 4") == 1, said


def test_ls_lists_functions_newest_first(up: str, intsum: str, tmp_path: Path) -> None:
    newest = deploy(up, modules.ECHO, tmp_path, "echo-for-ls")
    listed = json.loads(out(wasmq(up, "ls", "--json")))["functions"]
    assert listed[0]["cfid"] == newest
    assert intsum in {f["cfid"] for f in listed}
    table = out(wasmq(up, "ls"))
    assert "echo-for-ls" in table and newest in table and intsum in table
    assert table.splitlines()[0].split()[:2] == ["name", "cfid"]


def test_ls_and_show_say_a_model_whose_build_failed_and_why(up: str) -> None:
    """Its size is 0 and it answers 409: the listing says why, as the console does."""
    from tests.test_model_upload import odd

    cfid = requests.post(f"{up}/functions", files={"file": ("odd.onnx", odd())},
                         data={"name": "odd-for-ls"}, timeout=30).json()["cfid"]
    wait_until(lambda: requests.get(f"{up}/functions/{cfid}", timeout=10).json()["status"]
               == "failed", timeout=60, what="the build to fail")
    row = next(line for line in out(wasmq(up, "ls")).splitlines() if cfid in line)
    assert "build failed" in row, row
    text = out(wasmq(up, "show", cfid))
    assert re.search(r"^status:\s+failed: model refused: .*Frobnicate", text, re.M), text


def test_show_prints_the_record_and_its_urls(up: str, intsum: str) -> None:
    text = out(wasmq(up, "show", intsum))
    assert "intsum-cli" in text and "adds up integers" in text
    assert f"{up}/task/{intsum}" in text
    assert f"{up}/run.html?cfid={intsum}" in text
    assert f"{up}/file/{intsum}.wasm" in text


def test_rm_deletes_and_then_the_cfid_is_unknown(up: str, tmp_path: Path) -> None:
    cfid = deploy(up, modules.ECHO, tmp_path, "doomed")
    removed = wasmq(up, "rm", cfid)
    assert removed.returncode == 0 and cfid in err(removed)
    gone = wasmq(up, "show", cfid)
    assert gone.returncode == 2
    assert f"no compute function with cfid '{cfid}'" in err(gone)
    assert wasmq(up, "rm", cfid).returncode == 2


def test_a_refused_module_exits_2_with_the_servers_message(up: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\x01\0\0\0")
    result = wasmq(up, "deploy", str(bad))
    assert result.returncode == 2
    assert "missing exports" in err(result) and "Traceback" not in err(result)


def test_usage_and_connection_errors_exit_2_without_a_traceback(up: str) -> None:
    missing_arg = wasmq(up, "run", "only-a-cfid")
    assert missing_arg.returncode == 2 and "Missing argument" in err(missing_arg)
    bad_wait = wasmq(up, "run", "x", "y", "--wait", "-1")
    assert bad_wait.returncode == 2
    closed = f"http://127.0.0.1:{free_port()}"
    for args in (["ls"], ["run", "x", "y"], ["result", "wasmqt-1"]):
        result = wasmq(closed, *args)
        assert result.returncode == 2, args
        assert f"cannot reach the wasmq gateway at {closed}" in err(result)
        assert "Traceback" not in err(result)


def test_url_and_key_options_override_the_environment(up: str, intsum: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = wasmq(closed, "run", intsum, "[1,1]", "--url", up, "--key", "anything")
    assert result.returncode == 0, err(result)
    assert result.stdout == b'{"output": [2]}'
    from_env = wasmq(closed, "show", intsum, WASMQ_URL=up, WASMQ_API_KEY="k")
    assert from_env.returncode == 0


def test_the_key_from_the_environment_is_sent_as_a_bearer_token(recorder: Recorder) -> None:
    assert wasmq(recorder.url, "ls", WASMQ_API_KEY="from-env").returncode == 0
    assert wasmq(recorder.url, "ls", "--key", "from-flag").returncode == 0
    assert wasmq(recorder.url, "ls").returncode == 0
    assert recorder.authorization == ["Bearer from-env", "Bearer from-flag", None]


def on_a_terminal(url: str, *args: str, stderr_too: bool = False) -> bytes:
    """Run the CLI with its stdout (and its stderr with `stderr_too`) on a
    pseudo-terminal, as a person at a shell sees it."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "wasmq", *args], cwd=ROOT,
                            env=child_env(WASMQ_URL=url), stdout=follower,
                            stderr=follower if stderr_too else subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks)


def test_run_on_a_terminal_ends_its_output_with_a_newline(up: str, intsum: str) -> None:
    assert on_a_terminal(up, "run", intsum, TUTORIAL_INPUT) == b'{"output": [55]}\r\n'


def test_run_on_a_terminal_tells_the_tid_on_stderr(up: str, intsum: str) -> None:
    seen = on_a_terminal(up, "run", intsum, TUTORIAL_INPUT, stderr_too=True)
    assert b'{"output": [55]}\r\n' in seen
    tid = re.search(rb"tid (wasmqt-[0-9a-f]+) \(`wasmq result \1` shows it again\)", seen)
    assert tid, seen
    fetched = wasmq(up, "result", tid.group(1).decode())
    assert fetched.stdout == b'{"output": [55]}', fetched.stderr


def test_the_user_manuals_terminal_example_runs_as_written(up: str, tmp_path: Path) -> None:
    readme = (ROOT / "docs" / "users.md").read_text()
    block = readme.split("**From a terminal.**", 1)[1].split("```sh\n", 1)[1].split("```")[0]
    # All but the line naming a task id by its shape (`wasmqt-…`).
    script = "\n".join(line for line in block.splitlines() if "…" not in line)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    ran = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True,
                         env=child_env(WASMQ_URL=up, PATH=path), timeout=120)
    assert ran.returncode == 0, ran.stderr.decode()
    lines = ran.stdout.decode().splitlines()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        lines[0]), "the manual shows a cfid of this shape"
    assert re.search(r"# [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", block)
    assert '{"output": [55]}{"output": [6]}' in ran.stdout.decode()  # piped: no newline added


@pytest.mark.fast
@pytest.mark.parametrize(("url", "says"), [
    ("127.0.0.1:8080", "has no scheme: write http://127.0.0.1:8080"),
    ("localhost:8080", "has no scheme: write http://localhost:8080"),
    ("ftp://127.0.0.1", "must start with http:// or https://, not ftp://"),
    ("http://", "names no host"),
    ("http://127.0.0.1:port", "has a port that is not a number"),
])
def test_a_gateway_url_that_cannot_work_is_named_in_wasmqs_words(url: str, says: str) -> None:
    result = wasmq(url, "ls")
    assert result.returncode == 2
    assert says in err(result) and "--url (or WASMQ_URL)" in err(result), err(result)
    assert "adapter" not in err(result) and "Traceback" not in err(result)


@pytest.mark.fast
def test_a_url_with_a_wrong_path_says_it_reached_wasmq_and_where_its_routes_are(
        live_app: str) -> None:
    result = wasmq(f"{live_app}/wrong", "ls")
    assert result.returncode == 2
    assert "nothing at GET /wrong/functions on this wasmq gateway" in err(result), err(result)
    assert "requested URL" not in err(result)


@pytest.mark.fast
def test_a_url_that_reaches_something_else_says_it_is_not_a_wasmq_gateway(
        tmp_path: Path) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/wrong"
        result = wasmq(url, "ls")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2
    assert f"GET {url}/functions answered HTTP 404" in err(result)
    assert "not as a wasmq gateway does" in err(result)


@pytest.mark.fast
def test_ls_json_prints_what_the_api_returns(live_app: str, client) -> None:
    for name in ("first", "second"):
        assert upload(client, modules.ECHO, name=name).status_code == 201
    listed = json.loads(out(wasmq(live_app, "ls", "--json")))
    assert listed == client.get("/functions?offset=0&limit=1000").get_json()
    assert [f["name"] for f in listed["functions"]] == ["second", "first"]
