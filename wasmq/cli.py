"""The `wasmq` command line: run the platform (up, gateway, worker) and use it
(deploy, ls, show, rm, run, result: see wasmq/commands.py)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from wasmq.broker.errors import ConfigError
from wasmq.broker.settings import Settings, available_cores
from wasmq.commands import register as register_client_commands

if TYPE_CHECKING:
    from wasmq.broker.protocol.purge import Purger


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None


@click.group()
@click.version_option(package_name="wasmq")
def main() -> None:
    """wasmq: WebAssembly compute functions as REST endpoints on a job queue."""


PORT = click.IntRange(0, 65535)
PORT_HELP = "Gateway port (0: any free port, printed)."


def _free(host: str, port: int) -> int:
    """`port`, or a port free now when it is 0; exit 2 with a message if it is taken."""
    from wasmq.broker.redis_server import free_port
    from wasmq.instance import InUse, check_port

    if port == 0:
        return free_port(host)
    try:
        check_port(host, port)
    except InUse as exc:
        _refuse(exc.message)
    return port


def _refuse(message: str) -> None:
    click.echo(f"wasmq: {message}", err=True)
    sys.exit(2)


@main.command()
@click.option("--port", type=PORT, default=8080, show_default=True, help=PORT_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway address.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes [default: number of cores].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where the embedded Redis keeps its data "
                                 "[default: $WASMQ_DATA_DIR or ./wasmq-data].")
@click.option("--queues", default="", metavar="Q1,Q2",
              help="The queues the workers consume [default: $WASMQ_QUEUES, else the "
                   "installation's queue, $WASMQ_QUEUE].")
def up(port: int, host: str, workers: int | None, data_dir: Path | None, queues: str) -> None:
    """Run everything on this machine: Redis, the gateway and workers."""
    from wasmq.instance import InUse, claim_data_dir
    from wasmq.supervisor import Supervisor

    if queues:
        os.environ["WASMQ_QUEUES"] = queues  # the workers' (and checked with the rest)
    settings = _settings()  # fail early on a malformed environment
    data_dir = (data_dir or Path(settings.data_dir or "wasmq-data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = claim_data_dir(data_dir)
    except InUse as exc:
        _refuse(exc.message)
    port = _free(host, port)
    supervisor = Supervisor(port=port, host=host, workers=workers or available_cores(),
                            data_dir=data_dir, redis_url=os.environ.get("WASMQ_REDIS_URL"),
                            env=dict(os.environ), lock=lock,
                            redis_maxmemory_mb=settings.redis_maxmemory_mb,
                            sentinels=settings.redis_sentinels, master=settings.redis_master)
    sys.exit(supervisor.run())


@main.command()
@click.option("--port", type=PORT, default=8080, show_default=True, help=PORT_HELP)
@click.option("--host", default="127.0.0.1", show_default=True)
def gateway(port: int, host: str) -> None:
    """Run the HTTP gateway alone, against WASMQ_REDIS_URL."""
    from wasmq.gateway import serve
    from wasmq.instance import InUse

    settings = _settings()
    port = _free(host, port)
    click.echo(f"wasmq gateway on http://{host}:{port}", err=True)
    try:
        serve(settings, host, port)
    except InUse as exc:
        _refuse(exc.message)


@main.command()
@click.option("--concurrency", type=click.IntRange(1, 256), default=None,
              help="Worker processes [default: number of cores].")
@click.option("--name", default="wasmq@%h", show_default=True, help="Celery node name.")
@click.option("--heartbeat-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Touch this file every few seconds (for `wasmq alive`).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append 'node PID' once consuming and 'pool PID' per warm pool process.")
@click.option("-Q", "--queues", default="", metavar="Q1,Q2",
              help="The queues this node consumes, as `celery worker -Q` [default: "
                   "$WASMQ_QUEUES, else the installation's queue, $WASMQ_QUEUE].")
def worker(concurrency: int | None, name: str, heartbeat_file: Path | None,
           ready_file: Path | None, queues: str) -> None:
    """Run a compute node (Celery worker) alone, against WASMQ_REDIS_URL."""
    settings = _settings()
    if queues:
        settings = replace(settings, queues=tuple(q.strip() for q in queues.split(",")
                                                  if q.strip()))
        settings.check()
    from wasmq.workers.node import build_worker_app, run_node
    from wasmq.workers.readiness import write_readiness

    app = build_worker_app(settings, heartbeat_file)
    if ready_file is not None:  # after the app: its warm-up runs first
        write_readiness(ready_file)
    run_node(app, ["worker", "--loglevel", "INFO", "-Q", ",".join(settings.consumed_queues),
                   "--concurrency", str(concurrency or available_cores()),
                   "-n", name, "-E", "--without-mingle"])


DATA_DIR_HELP = ("The data directory of the running `wasmq up` whose Redis to use when "
                 "WASMQ_REDIS_URL is not set [default: $WASMQ_DATA_DIR or ./wasmq-data].")


def _purger(data_dir: Path | None) -> Purger:
    """A Purger on WASMQ_REDIS_URL (or the Sentinel primary), or else on the Redis
    of the `wasmq up` running on `data_dir` (its lock file names it)."""
    import redis

    from wasmq.broker.celery_app import make_celery
    from wasmq.broker.connections import new_client
    from wasmq.broker.protocol.purge import Purger
    from wasmq.broker.protocol.queue import TaskQueue
    from wasmq.instance import read_instance

    settings = _settings()
    where = settings.redis_url
    if not os.environ.get("WASMQ_REDIS_URL") and not settings.redis_sentinels:
        folder = (data_dir or Path(settings.data_dir or "wasmq-data")).resolve()
        running = read_instance(folder)
        if running is None:
            _refuse(f"no Redis to purge: set WASMQ_REDIS_URL, or give the --data-dir of a "
                    f"running wasmq up (none runs on {folder})")
        if not running.redis_url:
            _refuse(f"the wasmq up running on {folder} follows Redis Sentinel: set "
                    f"WASMQ_REDIS_SENTINELS and WASMQ_REDIS_MASTER as it has them")
        where = running.redis_url
        settings = replace(settings, redis_url=where)
    elif settings.redis_sentinels:
        where = f"the primary {settings.redis_master!r} (Sentinel)"
    client = new_client(settings, socket_connect_timeout=2, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        _refuse(f"cannot reach Redis at {where}: {exc}")
    return Purger(TaskQueue.from_settings(client, settings), make_celery(settings),
                  settings.queue)


@main.command()
@click.option("--function", "cfid", default="", help="Only the tasks of this cfid.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=DATA_DIR_HELP)
def purge(cfid: str, data_dir: Path | None) -> None:
    """Cancel every queued task (of one function with --function).

    Their messages leave the queue, and their records answer statusCode 0
    "cancelled". Tasks already running are not touched."""
    done = _purger(data_dir).purge(cfid)
    scope = f" of {cfid}" if cfid else ""
    click.echo(f"cancelled {done.tasks} queued task{'s' * (done.tasks != 1)}{scope} "
               f"({done.messages} Celery message{'s' * (done.messages != 1)} removed)")


@main.command()
@click.argument("tid")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=DATA_DIR_HELP)
def cancel(tid: str, data_dir: Path | None) -> None:
    """Cancel task TID if it is still queued (a running task cannot be stopped)."""
    outcome = _purger(data_dir).cancel(tid)
    if outcome.cancelled:
        click.echo(f"cancelled {tid}")
    elif outcome.status is None:
        raise click.ClickException(f"no task {tid} (unknown, or expired)")
    elif outcome.status == "running":
        raise click.ClickException(
            f"task {tid} is already running on {outcome.node or 'a worker'} and cannot be "
            f"stopped; it ends by itself or at its time limit")
    else:
        raise click.ClickException(f"task {tid} has already {outcome.status}")


@main.command()
@click.argument("heartbeat_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-age", type=click.FloatRange(min=1), default=30, show_default=True,
              help="Seconds since the last heartbeat that still count as alive.")
def alive(heartbeat_file: Path, max_age: float) -> None:
    """Exit 0 if the worker touching HEARTBEAT_FILE is alive (a liveness probe)."""
    try:
        age = time.time() - heartbeat_file.stat().st_mtime
    except OSError:
        raise click.ClickException(f"no heartbeat at {heartbeat_file}") from None
    if age > max_age:
        raise click.ClickException(f"last heartbeat {age:.0f} s ago (limit {max_age:g} s)")
    click.echo(f"alive: last heartbeat {age:.1f} s ago")


register_client_commands(main)
