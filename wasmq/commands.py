"""`wasmq deploy | ls | show | rm | run | result`: the Python client from a terminal.

Exit codes scripts can rely on: 0 done, 1 the task ran and failed, 2 a usage
error, an unreachable gateway or a refused request, 3 the task was still
running when the wait ended (`wasmq result TID` fetches it later).
Results go to stdout byte for byte; messages and the spinner go to stderr.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
from rich.console import Console
from rich.table import Table

from wasmq import errors
from wasmq.client import Client, Function, Result

DONE, TASK_FAILED, USAGE, PENDING = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:8080"
STDERR_IN_MESSAGE = "; module stderr: "  # how a failure message quotes the module's stderr


class Out:
    """Where a command writes: JSON for scripts, or text and tables for people."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.err = Console(stderr=True, highlight=False)
        tty = sys.stdout.isatty()
        # Piped tables keep whole ids rather than wrapping them at 80 columns.
        self.out = Console(highlight=False, width=None if tty else 200)

    def json(self, value: Any) -> None:
        click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=_text))

    def say(self, message: str) -> None:
        self.err.print(message, markup=False, soft_wrap=True)

    def spinner(self, message: str) -> Any:
        return self.err.status(message, spinner="dots")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def client_command(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Add --url, --key and --json, and turn client errors into exit codes."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @click.option("--key", envvar="WASMQ_API_KEY", default=None, show_envvar=True,
                  help="API key, sent as 'Authorization: Bearer <key>'.")
    @click.option("--url", envvar="WASMQ_URL", default=DEFAULT_URL, show_default=True,
                  show_envvar=True, help="The wasmq gateway.")
    @functools.wraps(fn)
    def command(url: str, key: str | None, as_json: bool, **kwargs: Any) -> None:
        out = Out(as_json)
        try:
            code = fn(Client(url, key), out, **kwargs) or DONE
        except errors.TaskFailed as exc:
            if as_json:
                out.json(exc.reply)
            stderr = exc.logs.get("stderr", "").strip() if not as_json else ""
            # The server's message may end with the stderr's tail, shown below in full.
            message = exc.message.partition(STDERR_IN_MESSAGE)[0] if stderr else exc.message
            out.say(f"wasmq: task {exc.tid} failed: {message}")
            if stderr:
                out.say(f"module stderr (last lines):\n{_tail(stderr)}")
            code = TASK_FAILED
        except errors.TaskTimeout as exc:
            if as_json:
                out.json({"statusCode": 5, "tid": exc.tid, "resultUrl": exc.result_url,
                          "message": exc.message})
            out.say(f"wasmq: {exc.message}\nfetch it later with: wasmq result {exc.tid}")
            code = PENDING
        except errors.InvalidUrl as exc:
            out.say(f"wasmq: --url (or WASMQ_URL): {exc.message}")
            code = USAGE
        except errors.ClientError as exc:
            out.say(f"wasmq: {exc.message}")
            code = USAGE
        sys.exit(code)

    return command


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read_data(data: str) -> str | bytes:
    """`-` reads stdin and `@path` a file, as bytes; anything else is the data itself."""
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@") and len(data) > 1:
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {data[1:]}: {exc.strerror}",
                                     param_hint="DATA") from None
    return data


def _print_result(out: Out, result: Result) -> None:
    if out.as_json:
        out.json(result.reply)
        return
    stream = sys.stdout.buffer
    stream.write(result.output)
    if sys.stdout.isatty() and not result.output.endswith(b"\n"):
        stream.write(b"\n")
    stream.flush()


def _try_url(client: Client, fn: Function) -> str:
    query = {"cfid": fn.cfid} | ({"exin": fn.exampleinput} if fn.exampleinput else {})
    return f"{client.url}/run.html?{urlencode(query)}"


@click.command()
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Name of the endpoint [default: the file's name].")
@click.option("--doc", "documentation", default="", help="What it computes, what it expects.")
@click.option("--example", "exampleinput", default="", help="An example input.")
@click.option("--queue", default="", help="The Celery queue whose nodes run it "
                                          "[default: the installation's].")
@client_command
def deploy(client: Client, out: Out, module: Path, name: str | None, documentation: str,
           exampleinput: str, queue: str) -> None:
    """Upload MODULE (a .wasm, or an ONNX model the server builds into one) as a new
    endpoint; prints its cfid."""
    with out.spinner(f"uploading {module.name}" + ("" if module.suffix == ".wasm"
                                                   else " (the server builds it)")):
        fn = client.deploy(module, name=name, documentation=documentation,
                           exampleinput=exampleinput, queue=queue)
    if out.as_json:
        out.json(fn.record)
        return
    click.echo(fn.cfid)
    out.say(f"deployed {fn.name!r} ({fn.size} bytes): POST {client.url}/task/{fn.cfid}\n"
            f"try it at {_try_url(client, fn)}")


@click.command(name="ls")
@client_command
def list_functions(client: Client, out: Out) -> None:
    """List the endpoints, newest first."""
    listing = client.listing()
    if out.as_json:
        out.json(listing)
        return
    functions = [Function.from_record(record) for record in listing["functions"]]
    table = Table("name", "cfid", "size", "created", "example input", box=None,
                  header_style="bold")
    for fn in functions:
        example = fn.exampleinput if len(fn.exampleinput) <= 40 else fn.exampleinput[:39] + "…"
        # A model still building, or whose build failed, is said beside its name.
        pending = fn.record if fn.record.get("status", "ready") != "ready" else \
            fn.record.get("build") or {}
        note = {"building": " (building)", "failed": " (build failed)"}.get(
            pending.get("status", ""), "")
        table.add_row(fn.name + note, fn.cfid, str(fn.size), fn.created_at, example)
    out.out.print(table)


@click.command()
@click.argument("cfid")
@client_command
def show(client: Client, out: Out, cfid: str) -> None:
    """Show one endpoint: its record and its URLs."""
    fn = client.function(cfid)
    if out.as_json:
        out.json(fn.record)
        return
    rows = [("name", fn.name), ("cfid", fn.cfid), ("status", _status(fn.record)),
            ("size", f"{fn.size} bytes"),
            ("sha256", fn.sha256), ("created", fn.created_at), ("updated", fn.updated_at),
            ("imports", ", ".join(fn.imports)), ("exports", ", ".join(fn.exports)),
            ("example", fn.exampleinput), ("endpoint", f"POST {client.url}/task/{fn.cfid}"),
            ("try it", _try_url(client, fn)), ("binary", f"{client.url}/file/{fn.cfid}.wasm"),
            ("docs", fn.documentation)]
    for label, value in rows:
        click.echo(f"{label + ':':<10}{value}")


def _status(record: dict) -> str:
    """ready, building, or failed and why; and a new model's build over a ready one."""
    status = record.get("status", "ready")
    if status == "failed":
        return f"failed: {record.get('reason', '')}"
    build = record.get("build") or {}
    if status == "ready" and build.get("status") == "building":
        return "ready (a new model is building)"
    if status == "ready" and build.get("status") == "failed":
        return f"ready (the new model failed: {build.get('reason', '')})"
    return status


@click.command(name="rm")
@click.argument("cfid")
@client_command
def remove(client: Client, out: Out, cfid: str) -> None:
    """Delete an endpoint and its binary."""
    client.delete(cfid)
    if out.as_json:
        out.json({"deleted": cfid})
    else:
        out.say(f"deleted {cfid}")


@click.command()
@click.argument("cfid")
@click.argument("data")
@click.option("--wait", type=click.FloatRange(0, 300), default=None,
              help="Seconds the gateway holds the call before answering 5 "
                   "[default: the server's]; then resultUrl is followed until done.")
@click.option("--timeout", type=click.FloatRange(0), default=None,
              help="Give up after this many seconds in all (exit code 3).")
@client_command
def run(client: Client, out: Out, cfid: str, data: str, wait: float | None,
        timeout: float | None) -> None:
    """Call CFID with DATA and print its result (`-` reads stdin, `@file` a file)."""
    payload = _read_data(data)
    with out.spinner(f"running {cfid}"):
        result = client.run(cfid, payload, wait=wait, timeout=timeout)
    _print_result(out, result)
    if not out.as_json and out.err.is_terminal:  # for a person: scripts read it with --json
        out.say(f"tid {result.tid} (`wasmq result {result.tid}` shows it again)")


@click.command()
@click.argument("tid")
@click.option("--wait", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Seconds to keep following resultUrl while the task still runs.")
@client_command
def result(client: Client, out: Out, tid: str, wait: float) -> None:
    """Print the result of task TID."""
    with out.spinner(f"waiting for {tid}"):
        found = client.result(tid, wait=wait)
    _print_result(out, found)


COMMANDS = (deploy, list_functions, show, remove, run, result)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
