"""The `wasmq` command line: run the platform (up, gateway, worker) and use it
(deploy, ls, show, rm, run, result: see wasmq/commands.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from broker.errors import ConfigError
from broker.settings import Settings
from wasmq.commands import register as register_client_commands


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None


@click.group()
@click.version_option(package_name="wasmq")
def main() -> None:
    """wasmq: WebAssembly compute functions as REST endpoints on a job queue."""


@main.command()
@click.option("--port", default=8080, show_default=True, help="Gateway port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway address.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes [default: number of cores].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where the embedded Redis keeps its data "
                                 "[default: $WASMQ_DATA_DIR or ./wasmq-data].")
def up(port: int, host: str, workers: int | None, data_dir: Path | None) -> None:
    """Run everything on this machine: Redis, the gateway and workers."""
    from wasmq.supervisor import Supervisor

    _settings()  # fail early on a malformed environment
    data_dir = (data_dir or Path(os.environ.get("WASMQ_DATA_DIR") or "wasmq-data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(port=port, host=host, workers=workers or os.cpu_count() or 1,
                            data_dir=data_dir, redis_url=os.environ.get("WASMQ_REDIS_URL"),
                            env=dict(os.environ))
    sys.exit(supervisor.run())


@main.command()
@click.option("--port", default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def gateway(port: int, host: str) -> None:
    """Run the HTTP gateway alone, against WASMQ_REDIS_URL."""
    from wasmq.gateway import serve

    serve(_settings(), host, port)


@main.command()
@click.option("--concurrency", type=click.IntRange(1, 256), default=None,
              help="Worker processes [default: number of cores].")
@click.option("--name", default="wasmq@%h", show_default=True, help="Celery node name.")
def worker(concurrency: int | None, name: str) -> None:
    """Run a compute node (Celery worker) alone, against WASMQ_REDIS_URL."""
    settings = _settings()
    from broker.celery_app import make_celery
    from workers.tasks import register_tasks

    app = make_celery(settings)
    register_tasks(app, settings)
    app.worker_main(["worker", "--loglevel", "INFO", "-Q", settings.queue,
                     "--concurrency", str(concurrency or os.cpu_count() or 1),
                     "-n", name, "-E", "--without-mingle"])


register_client_commands(main)
