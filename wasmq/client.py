"""A small typed client for a wasmq gateway: deploy, run, wait, list, delete.

    from wasmq.client import Client

    wq = Client("http://127.0.0.1:8080")
    fn = wq.deploy("examples/intsum/intsum.wasm", name="intsum")
    print(wq.run(fn.cfid, '{"input": [[1,2,3]]}').text)      # {"output": [6]}

Task calls travel as msgpack, so `bytes` reach the module and come back
without base64 (`Result.output` is always the module's exact bytes); the rest
of the API is plain JSON. Every refusal is raised as an exception from
`wasmq.errors` carrying the gateway's own message.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgpack
import requests

from wasmq import errors

MSGPACK = "application/msgpack"
MAX_SERVER_WAIT = 300.0  # the gateway's own cap on ?wait=
PAGE = 1000
USER_AGENT = "wasmq-client/0.1"


@dataclass(frozen=True)
class Function:
    """A deployed compute function, as the gateway describes it."""

    cfid: str
    name: str
    documentation: str
    exampleinput: str
    sha256: str
    size: int
    imports: list[str]
    exports: list[str]
    created_at: str
    updated_at: str
    record: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Function:
        return cls(cfid=record["cfid"], name=record.get("name", ""),
                   documentation=record.get("documentation", ""),
                   exampleinput=record.get("exampleinput", ""),
                   sha256=record.get("sha256", ""), size=int(record.get("size", 0)),
                   imports=list(record.get("imports", [])),
                   exports=list(record.get("exports", [])),
                   created_at=record.get("createdAt", ""),
                   updated_at=record.get("updatedAt", ""), record=record)


@dataclass(frozen=True)
class Result:
    """A finished task: the module's output bytes and what the gateway said."""

    tid: str
    output: bytes
    message: str
    result_url: str
    reply: dict[str, Any] = field(repr=False, compare=False)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.output)

    @property
    def logs(self) -> dict[str, str]:
        return self.reply.get("logs") or {}

    @property
    def timings(self) -> dict[str, Any]:
        return self.reply.get("timings") or {}


class Task:
    """A submitted call; `wait()` follows its resultUrl until it is done."""

    def __init__(self, client: Client, tid: str, result_url: str,
                 result: Result | None = None) -> None:
        self.client = client
        self.tid = tid
        self.result_url = result_url
        self._result = result

    def __repr__(self) -> str:
        return f"Task(tid={self.tid!r})"

    def poll(self) -> Result | None:
        """The result if the task is done, None while it is queued or running."""
        if self._result is None:
            self._result = self.client._outcome(
                self.client._get_reply(self.result_url or self.client._url(
                    f"/retrieve/{self.tid}")))
        return self._result

    def wait(self, timeout: float | None = None) -> Result:
        """Block until done (raises TaskFailed) or `timeout` seconds (TaskTimeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while (result := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.TaskTimeout(
                    f"task {self.tid} is still queued or running; its result will be at "
                    f"{self.result_url}", self.tid, self.result_url)
            left = float("inf") if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(pause, left)))
            pause = min(pause * 1.5, 1.0)
        return result


class Client:
    """Talks to one gateway; `key` is sent as `Authorization: Bearer <key>`."""

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = gateway_url(url)
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # functions

    def deploy(self, path: str | os.PathLike[str], *, name: str | None = None,
               documentation: str = "", exampleinput: str = "", queue: str = "",
               timeout: float = 300.0) -> Function:
        """Upload a .wasm, which the gateway checks against the ABI before keeping it,
        or an ONNX model, which it builds in the background: waits up to `timeout`
        seconds for the build, and raises BuildFailed with the server's reason.
        `queue`: the Celery queue whose nodes run it (default: the installation's)."""
        with open(path, "rb") as module:
            wasm = module.read()
        fields = {"name": name or os.path.splitext(os.path.basename(path))[0],
                  "documentation": documentation, "exampleinput": exampleinput,
                  "queue": queue}
        response = self._request("POST", "/functions", data=fields,
                                 files={"file": (os.path.basename(path), wasm,
                                                 "application/wasm")})
        return Function.from_record(self._built(self._decode(response), timeout))

    def deploy_model(self, model: Any, *, name: str | None = None, example: Any = None,
                     check: Any = None, documentation: str = "",
                     timeout: float = 300.0) -> Function:
        """Upload a model (ONNX path or bytes, onnx.ModelProto, a fitted scikit-learn
        estimator converted here with skl2onnx, or an XGBoost or LightGBM model converted
        with onnxmltools), wait for the server to build it, and return the function.

        `example` (a feature vector, rows of a float64 array, or a pandas DataFrame: one
        input per column) fixes the inputs. The rows of `check` (the example's rows if not
        given; e.g. `check=X[:50]`) are run locally with onnxruntime and one by one on the
        new endpoint: a disagreement raises ModelMismatch. When the conversion itself
        drifts from the estimator's own predictions on those rows, a ConversionDrift
        warning says by how much.
        """
        import warnings

        from wasmq import modelfile

        data = modelfile.onnx_bytes(model, example)
        label = name or (os.path.splitext(os.path.basename(model))[0]
                         if isinstance(model, (str, os.PathLike)) else type(model).__name__)
        fields = {"name": label, "documentation": documentation,
                  "exampleinput": modelfile.request(example) if example is not None else ""}
        response = self._request("POST", "/functions", data=fields,
                                 files={"file": (f"{label}.onnx", data,
                                                 "application/octet-stream")})
        record = self._built(self._decode(response), timeout)
        function = Function.from_record(record)
        rows = check if check is not None else example
        if rows is None:
            return function
        rows = modelfile.rows_of(rows)
        local = modelfile.local_outputs(data, rows)
        for i in range(len(rows)):
            remote = self.run(function.cfid, modelfile.row_request(rows, i)).json()
            why = modelfile.disagreement(modelfile.row(local, i),
                                         remote if isinstance(remote, dict) else {})
            if why:
                raise errors.ModelMismatch(f"the endpoint {function.cfid} disagrees with the "
                                           f"model run locally on row {i}: {why}")
        drifted = modelfile.drift(model, local, rows)
        if drifted:
            warnings.warn(errors.ConversionDrift(drifted), stacklevel=2)
        return function

    def _built(self, record: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The record once its build is over: ready, or BuildFailed with the server's why."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while record.get("status") == "building":
            if time.monotonic() > deadline:
                raise errors.TaskTimeout(f"the model {record.get('cfid')} was still building "
                                         f"after {timeout:g} s", "", "")
            time.sleep(delay)
            delay = min(1.0, delay * 1.5)
            record = self._decode(self._request("GET", f"/functions/{record['cfid']}"))
        if record.get("status") == "failed":
            why = record.get("reason") or record.get("message") or "no reason given"
            raise errors.BuildFailed(f"the server could not build the model: {why}", record)
        return record

    def function(self, cfid: str) -> Function:
        return Function.from_record(self._decode(self._request("GET", f"/functions/{cfid}")))

    def functions(self) -> list[Function]:
        """Every function, newest first (fetched a page at a time)."""
        return [Function.from_record(r) for r in self.listing()["functions"]]

    def listing(self) -> dict[str, Any]:
        """`GET /functions` as the gateway answers it, with every page in one."""
        records: list[dict[str, Any]] = []
        first: dict[str, Any] | None = None
        while True:
            page = self._decode(self._request("GET", "/functions",
                                              params={"offset": len(records), "limit": PAGE}))
            first = first or page
            records += page["functions"]
            if not page["functions"] or len(records) >= page["total"]:
                return {**first, "functions": records}

    def delete(self, cfid: str) -> None:
        self._request("DELETE", f"/functions/{cfid}")

    # tasks

    def submit(self, cfid: str, data: str | bytes) -> Task:
        """Queue a call and return at once; `.wait()` on the handle for the result."""
        return self._post_task(cfid, data, wait=0.0)

    def run(self, cfid: str, data: str | bytes, wait: float | None = None,
            timeout: float | None = None) -> Result:
        """Call a function and return its result.

        `wait` is how long the gateway holds the call before answering
        statusCode 5 (its default when None); after that the client follows
        resultUrl until the task is done, or until `timeout` seconds in all.
        """
        started = time.monotonic()
        task = self._post_task(cfid, data, wait=wait)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return task.wait(left)

    def result(self, tid: str, wait: float = 0.0) -> Result:
        """A task's result, polling up to `wait` seconds (TaskTimeout if still running)."""
        return Task(self, tid, self._url(f"/retrieve/{tid}")).wait(wait)

    # plumbing

    def _post_task(self, cfid: str, data: str | bytes, wait: float | None) -> Task:
        if not isinstance(data, (str, bytes)):
            raise TypeError(f"data must be str or bytes, got {type(data).__name__}")
        envelope = {"input": {"content-type": "json", "location": "embedded", "data": data},
                    "output": {"content-type": "json", "location": "echo"}, "control": 1,
                    "properties": {"language": "WASM"}}
        params = {} if wait is None else {"wait": f"{min(wait, MAX_SERVER_WAIT):g}"}
        held = MAX_SERVER_WAIT if wait is None else min(wait, MAX_SERVER_WAIT)
        response = self._request(
            "POST", f"/task/{cfid}", params=params,
            data=msgpack.packb(envelope, use_bin_type=True),
            headers={"Content-Type": MSGPACK, "Accept": MSGPACK},
            timeout=(self.timeout, held + self.timeout))
        reply = self._decode(response)
        return Task(self, reply.get("tid", ""), reply.get("resultUrl", ""),
                    self._outcome(reply))

    def _get_reply(self, url: str) -> dict[str, Any]:
        return self._decode(self._request("GET", url, headers={"Accept": MSGPACK}))

    def _outcome(self, reply: dict[str, Any]) -> Result | None:
        code = reply.get("statusCode")
        if code == 5:
            return None
        tid = reply.get("tid", "")
        if code == 1:
            output = reply.get("result") or b""
            if isinstance(output, str):
                output = output.encode("utf-8")
            return Result(tid=tid, output=output, message=reply.get("message", ""),
                          result_url=reply.get("resultUrl", ""), reply=reply)
        raise errors.TaskFailed(reply.get("message") or f"task {tid} failed", tid, reply)

    def _url(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.url + path_or_url

    def _request(self, method: str, path_or_url: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        url = self._url(path_or_url)
        try:
            response = self.http.request(method, url, **kw)
        except requests.Timeout:
            raise errors.ConnectError(f"the wasmq gateway at {self.url} did not answer "
                                      "in time") from None
        except requests.RequestException as exc:
            raise errors.ConnectError(f"cannot reach the wasmq gateway at {self.url}: "
                                      f"{_reason(exc)}") from None
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    @staticmethod
    def _decode(response: requests.Response) -> dict[str, Any]:
        body = _body(response)
        if body is None:
            raise errors.ApiError(f"{response.url} answered HTTP {response.status_code} with "
                                  "a body that is neither JSON nor msgpack, not as a wasmq "
                                  "gateway does: is the gateway's URL right?",
                                  response.status_code)
        return body


def _body(response: requests.Response) -> dict[str, Any] | None:
    kind = response.headers.get("Content-Type", "").split(";")[0].strip()
    try:
        if kind in (MSGPACK, "application/x-msgpack", "application/vnd.msgpack"):
            body = msgpack.unpackb(response.content, raw=False)
        else:
            body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def gateway_url(url: str) -> str:
    """The gateway's base URL, or a message saying what is wrong with it."""
    url = url.strip()
    if "://" not in url:
        raise errors.InvalidUrl(f"the gateway URL {url!r} has no scheme: write "
                                f"http://{url} or https://{url}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise errors.InvalidUrl(f"the gateway URL {url!r} must start with http:// or "
                                f"https://, not {parts.scheme}://")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise errors.InvalidUrl(f"the gateway URL {url!r} has a port that is not a number "
                                "from 0 to 65535") from None
    if not parts.hostname:
        raise errors.InvalidUrl(f"the gateway URL {url!r} names no host; write one such as "
                                "http://127.0.0.1:8080")
    if parts.query or parts.fragment:
        raise errors.InvalidUrl(f"the gateway URL {url!r} has a query or fragment; give "
                                "only the gateway's base, such as http://127.0.0.1:8080")
    return url.rstrip("/")


def _api_error(response: requests.Response) -> errors.ApiError:
    body = _body(response)
    if body is None or "statusCode" not in body:  # not a wasmq reply: a wrong URL
        return errors.for_status(response.status_code)(
            f"{response.request.method} {response.url.split('?')[0]} answered HTTP "
            f"{response.status_code} "
            f"{response.reason}, and not as a wasmq gateway does: is the gateway's URL right?",
            response.status_code, body)
    message = body.get("message") or f"HTTP {response.status_code} {response.reason}"
    kind = errors.for_status(response.status_code)
    if kind is errors.RateLimited:
        retry = response.headers.get("Retry-After")
        return errors.RateLimited(message, response.status_code, body,
                                  float(retry) if retry and retry.isdigit() else None)
    return kind(message, response.status_code, body)


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause, without urllib3's nested reprs."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    return str(cause) or type(cause).__name__
