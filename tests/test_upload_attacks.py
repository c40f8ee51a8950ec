"""Hostile upload bodies over real HTTP on loopback (the in-process gateway served by
Hypercorn, against the session's Redis): each gets a clear refusal naming its problem,
and none makes the gateway hold more than its bounds."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import urllib3

from tests import modules
from tests.support import serve, wait_until
from tests.test_bounds import bounds_of, gateway
from wasmq.api.upload_body import HEAD_LIMIT, MAX_PARTS, BodyWindow

pytestmark = pytest.mark.fast
BOUNDARY = "wasmqattack"
TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _open(url: str) -> socket.socket:
    where = urlparse(url)
    return socket.create_connection((where.hostname, where.port), timeout=10)


def _head(url: str, headers: dict[str, str], method: str = "POST",
          path: str = "/functions") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {urlparse(url).netloc}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def _reply(sock: socket.socket, within: float) -> tuple[int, dict]:
    """The status and JSON body of the reply, read within `within` seconds."""
    sock.settimeout(within)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a reply: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            body += sock.recv(65536)
        out, rest = b"", body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if not n:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    else:
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += sock.recv(65536)
    return status, json.loads(body)


def _send(sock: socket.socket, data: bytes) -> None:
    """Sent as far as the gateway reads it (it may answer and stop reading first)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass


def _chunked(data: bytes, size: int = 64 << 10) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
                   for i in range(0, len(data), size))
    return out + b"0\r\n\r\n"


@pytest.fixture(scope="module")
def small(redis_url: str) -> Iterator[str]:
    """A gateway whose uploads are at most 1 MB, served over HTTP on loopback."""
    with serve(gateway(redis_url, max_module_mb=1)) as url:
        yield url


def test_a_chunked_upload_is_refused_once_it_passes_the_module_limit(small: str) -> None:
    """A chunked body has no length to refuse up front: it must be refused once it is
    read past the limit, however it is spread over parts (here a part that is not the
    file, which the parser drops, then the file)."""
    body, content_type = urllib3.encode_multipart_formdata(
        [("junk", ("junk.bin", bytes(3 << 20))), ("file", ("echo.wasm", modules.ECHO))])
    sock = _open(small)
    with sock:
        _send(sock, _head(small, {"Content-Type": content_type,
                                  "Transfer-Encoding": "chunked"}) + _chunked(body))
        status, reply = _reply(sock, 10)
    assert status == 413, reply
    assert "larger than the module size limit of 1 MB" in reply["message"], reply


@pytest.mark.parametrize("what, start", [
    ("preamble", b"no boundary here, and none to come " * 8),
    ("part headers", (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                      f"filename=\"m.wasm\"\r\nX-Pad: ").encode()),
    ("epilogue", (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n"
                  f"--{BOUNDARY}--\r\n").encode()),
])
def test_bytes_outside_any_part_are_refused_before_the_gateway_holds_them_all(
        small: str, what: str, start: bytes) -> None:
    """werkzeug's decoder keeps whatever is not a part's data (text before the first
    boundary, a part's headers, text after the last) in memory until it ends: an
    upload made only of that held up to its whole body, past the process budget."""
    declared = 1 << 20  # within the limit: nothing refuses it unread
    sock = _open(small)
    with sock:
        _send(sock, _head(small, {"Content-Type": TYPE, "Content-Length": str(declared)})
              + start + b"x" * (4 * HEAD_LIMIT))  # then the client waits
        started = time.monotonic()
        status, reply = _reply(sock, 5)
    assert time.monotonic() - started < 5
    assert status == 400 and what in reply["message"], reply


def test_a_form_of_too_many_parts_is_refused_naming_its_parts(small: str) -> None:
    body, content_type = urllib3.encode_multipart_formdata(
        [(f"f{i}", "x") for i in range(MAX_PARTS + 1)] + [("file", ("m.wasm", modules.ECHO))])
    sock = _open(small)
    with sock:
        _send(sock, _head(small, {"Content-Type": content_type,
                                  "Content-Length": str(len(body))}) + body)
        status, reply = _reply(sock, 10)
    assert status == 413 and f"more than {MAX_PARTS} parts" in reply["message"], reply


@pytest.mark.parametrize("body, says", [
    (f"--{BOUNDARY}\r\nX-No-Disposition: 1\r\n\r\nabc\r\n--{BOUNDARY}--\r\n",
     "Content-Disposition"),
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--{BOUNDARY}--\r\n",
     "'file'"),
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.wasm\""
     f"\r\n\r\n\0asm", "ended before its file did"),
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.wasm\""
     f"\r\n\r\n\0asm\x01\0\0\0\r\n--{BOUNDARY}\r\nContent-Disp", "well-formed"),
])
def test_a_malformed_form_gets_a_400_naming_its_problem(small: str, body: str,
                                                        says: str) -> None:
    data = body.encode()
    sock = _open(small)
    with sock:
        _send(sock, _head(small, {"Content-Type": TYPE, "Content-Length": str(len(data))})
              + data)
        status, reply = _reply(sock, 10)
    assert status == 400 and says in reply["message"], reply


def test_a_function_deleted_while_its_replacement_is_uploading_answers_404(
        small: str) -> None:
    http = urllib3.PoolManager()
    made = http.request("POST", f"{small}/functions",
                        fields={"file": ("echo.wasm", modules.ECHO), "name": "echo"})
    assert made.status == 201, made.data
    cfid = json.loads(made.data)["cfid"]
    body, content_type = urllib3.encode_multipart_formdata({"file": ("e.wasm", modules.ECHO)})
    sock = _open(small)
    with sock:
        _send(sock, _head(small, {"Content-Type": content_type,
                                  "Content-Length": str(len(body))},
                          method="PUT", path=f"/functions/{cfid}") + body[:100])
        time.sleep(0.3)  # the gateway has found the function and reads its body
        gone = http.request("DELETE", f"{small}/functions/{cfid}")
        assert gone.status in (200, 204), gone.data
        _send(sock, body[100:])
        status, reply = _reply(sock, 10)
    assert status == 404 and cfid in reply["message"], reply
    assert http.request("GET", f"{small}/functions/{cfid}").status == 404


def test_a_client_that_stops_mid_body_is_answered_408_and_holds_nothing(
        redis_url: str) -> None:
    app = gateway(redis_url, max_module_mb=1)
    app.config["BODY_TIMEOUT"] = 1
    window = bounds_of(app).app
    while not isinstance(window, BodyWindow):  # the middleware in front of the app
        window = window.app
    body, content_type = urllib3.encode_multipart_formdata({"file": ("e.wasm", bytes(600_000))})
    with serve(app) as url, _open(url) as sock:
        _send(sock, _head(url, {"Content-Type": content_type,
                                "Content-Length": str(len(body))}) + body[:400_000])
        started = time.monotonic()
        status, reply = _reply(sock, 10)
        took = time.monotonic() - started
        assert status == 408 and reply["message"], reply
        assert took < 3, took
        assert wait_until(lambda: window.unread == 0 and not window.windows, timeout=5)


def test_a_boundary_that_is_not_ascii_is_refused_naming_it(small: str) -> None:
    """RFC 2231 lets a header parameter be any text (`boundary*=UTF-8''...`); a
    boundary is ASCII (RFC 2046): encoding it as Latin-1 was an unhandled error, a 500."""
    data = b"--x\r\n"
    sock = _open(small)
    with sock:
        _send(sock, _head(small, {"Content-Type": "multipart/form-data; "
                                                  "boundary*=UTF-8''%E2%82%AC",
                                  "Content-Length": str(len(data))}) + data)
        status, reply = _reply(sock, 10)
    assert status == 400 and "boundary" in reply["message"], reply


def test_a_nameless_part_and_a_second_file_change_nothing(small: str) -> None:
    """The first part named `file` is the module; parts without a name, and a second
    `file`, are dropped (the second unread into memory or disk)."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nnameless\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; filename=\"x\"\r\n\r\nx\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"first.wasm\"\r\n\r\n").encode() + modules.ECHO + (
            f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"second.wasm\"\r\n\r\nnot a module\r\n--{BOUNDARY}--\r\n").encode()
    sock = _open(small)
    with sock:
        _send(sock, _head(small, {"Content-Type": TYPE, "Content-Length": str(len(body))})
              + body)
        status, reply = _reply(sock, 10)
    assert status == 201 and reply["name"] == "first", reply
