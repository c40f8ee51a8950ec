"""The Python client against a live `wasmq up`: every method, bytes both ways,
and each kind of refusal raised as its own exception with the server's words."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import modules
from tests.conftest import Recorder
from tests.support import INTSUM, TUTORIAL_INPUT
from wasmq import errors
from wasmq.client import Client, Function, Result, Task


@pytest.fixture(scope="module")
def client(up: str) -> Client:
    return Client(up)


@pytest.fixture(scope="module")
def intsum(client: Client) -> Function:
    return client.deploy(INTSUM, name="intsum", exampleinput=TUTORIAL_INPUT,
                         documentation="adds up integers")


def module_file(tmp_path: Path, wasm: bytes, name: str = "m.wasm") -> Path:
    path = tmp_path / name
    path.write_bytes(wasm)
    return path


def test_deploy_returns_the_function_record(client: Client, intsum: Function) -> None:
    assert intsum.name == "intsum"
    assert intsum.size == INTSUM.stat().st_size
    assert intsum.exampleinput == TUTORIAL_INPUT
    assert intsum.documentation == "adds up integers"
    assert "pred" in intsum.exports
    assert client.function(intsum.cfid) == intsum


def test_deploy_names_the_function_after_its_file_by_default(client: Client,
                                                             tmp_path: Path) -> None:
    fn = client.deploy(module_file(tmp_path, modules.ECHO, "echo-me.wasm"))
    assert fn.name == "echo-me"


def test_run_returns_the_tutorial_answer(client: Client, intsum: Function) -> None:
    result = client.run(intsum.cfid, TUTORIAL_INPUT)
    assert isinstance(result, Result)
    assert result.output == b'{"output": [55]}'
    assert result.text == '{"output": [55]}'
    assert result.json() == {"output": [55]}
    assert result.tid.startswith("wasmqt-")
    assert result.result_url.endswith(f"/retrieve/{result.tid}")


def test_bytes_reach_the_module_and_come_back_unchanged(client: Client,
                                                       tmp_path: Path) -> None:
    echo = client.deploy(module_file(tmp_path, modules.ECHO), name="echo")
    payload = bytes(range(256)) * 3  # not UTF-8, NUL bytes included
    assert client.run(echo.cfid, payload).output == payload
    assert client.submit(echo.cfid, payload).wait(30).output == payload


def test_text_is_sent_as_utf8(client: Client, tmp_path: Path) -> None:
    echo = client.deploy(module_file(tmp_path, modules.ECHO), name="echo")
    assert client.run(echo.cfid, "héllo ✓").output == "héllo ✓".encode()


def test_submit_returns_a_handle_that_waits_for_the_result(client: Client,
                                                          tmp_path: Path) -> None:
    slow = client.deploy(module_file(tmp_path, modules.SLOW), name="slow")
    task = client.submit(slow.cfid, "800")
    assert isinstance(task, Task) and task.tid.startswith("wasmqt-")
    assert task.poll() is None  # still running: wait=0 answers at once
    assert task.wait(timeout=30).text == "800"
    assert client.result(task.tid).text == "800"


def test_run_follows_the_result_url_when_the_gateway_answers_5(client: Client,
                                                              tmp_path: Path) -> None:
    slow = client.deploy(module_file(tmp_path, modules.SLOW), name="slow")
    result = client.run(slow.cfid, "1200", wait=0.1)
    assert result.text == "1200"


def test_a_task_still_running_at_the_timeout_raises_task_timeout(client: Client,
                                                                tmp_path: Path) -> None:
    slow = client.deploy(module_file(tmp_path, modules.SLOW), name="slow")
    with pytest.raises(errors.TaskTimeout) as caught:
        client.run(slow.cfid, "2000", wait=0, timeout=0.3)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.tid in caught.value.result_url
    with pytest.raises(errors.TaskTimeout):
        client.result(caught.value.tid)
    assert client.result(caught.value.tid, wait=30).text == "2000"


def test_a_failing_task_raises_task_failed_with_the_servers_message(client: Client,
                                                                   tmp_path: Path) -> None:
    failing = client.deploy(module_file(tmp_path, modules.FAILING_PRED), name="failing")
    with pytest.raises(errors.TaskFailed) as caught:
        client.run(failing.cfid, "x")
    assert "pred() returned 1" in caught.value.message
    assert caught.value.tid.startswith("wasmqt-")
    assert caught.value.reply["statusCode"] == 0
    trapping = client.deploy(module_file(tmp_path, modules.TRAPPING), name="trap")
    with pytest.raises(errors.TaskFailed, match="unreachable"):
        client.submit(trapping.cfid, "x").wait(30)


def test_functions_lists_newest_first_and_delete_removes(client: Client,
                                                        tmp_path: Path) -> None:
    fn = client.deploy(module_file(tmp_path, modules.ECHO), name="to-delete")
    listed = client.functions()
    assert listed[0].cfid == fn.cfid
    client.delete(fn.cfid)
    assert fn.cfid not in {f.cfid for f in client.functions()}
    with pytest.raises(errors.NotFound, match=fn.cfid):
        client.function(fn.cfid)
    with pytest.raises(errors.NotFound):
        client.delete(fn.cfid)


def test_refusals_raise_api_errors_carrying_the_servers_message(client: Client,
                                                               tmp_path: Path) -> None:
    with pytest.raises(errors.BadRequest) as caught:
        client.deploy(module_file(tmp_path, b"not wasm at all"))
    assert caught.value.status == 400
    assert caught.value.body["statusCode"] == 0
    assert caught.value.message == caught.value.body["message"]
    with pytest.raises(errors.NotFound, match="no compute function with cfid 'missing'"):
        client.run("missing", "x")
    with pytest.raises(errors.NotFound, match="unknown or its result has expired"):
        client.result("wasmqt-0000")
    with pytest.raises(errors.BadRequest, match="wait must be between"):
        client.run("missing", "x", wait=-1)
    with pytest.raises(TypeError):
        client.run("missing", 42)  # type: ignore[arg-type]


def test_an_unreachable_gateway_raises_connect_error() -> None:
    from wasmq.broker.redis_server import free_port

    with pytest.raises(errors.ConnectError, match="cannot reach the wasmq gateway"):
        Client(f"http://127.0.0.1:{free_port()}").functions()


def test_the_key_is_sent_as_a_bearer_token(recorder: Recorder) -> None:
    Client(recorder.url, key="s3cret").functions()
    Client(recorder.url).functions()
    assert recorder.authorization == ["Bearer s3cret", None]
