"""Serve the gateway on gunicorn (threads, not Flask's development server)."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from broker.logs import setup_logging
from broker.settings import Settings


class GatewayServer(BaseApplication):
    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.settings = settings
        self.options = {
            "bind": f"{host}:{port}",
            "workers": settings.gateway_processes,
            "worker_class": "gthread",
            "threads": settings.gateway_threads,
            "timeout": 60,
            "graceful_timeout": 10,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "wasmq-gateway",
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # noqa: ANN201 - a WSGI app, built in each server process
        from api.app import create_app

        return create_app(self.settings)


def serve(settings: Settings, host: str, port: int) -> None:
    setup_logging(settings.log_format)  # before the fork: every process inherits it
    GatewayServer(settings, host, port).run()
