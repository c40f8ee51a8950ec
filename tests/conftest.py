"""Session fixtures: a real redis-server, a real gateway on loopback, and real
Celery worker processes, started once and shared by the tests; and, for
request parsing and replies, the app in-process (`app`, `client`, as in
Flask's tutorial) against the same redis-server."""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.localstack import Stack, start_stack
from tests.stacks import private  # noqa: F401 - a fixture: private stacks for fault tests
from tests.support import Api, serve, start_redis, start_up
from wasmq.api.app import create_app
from wasmq.broker.settings import Settings

# The in-process app's queue: no worker reads it, so what a request queued
# stays there for the test to look at.
INPROCESS_QUEUE = "wasmq-inprocess"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    # The in-process apps' completion listeners are threads of this process that
    # outlive their tests by design; they lose this Redis now, as the session
    # means them to, and would say so after pytest's summary, as if something failed.
    logging.getLogger("wasmq.subscription").disabled = True
    proc.stop()


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"), redis_url)
    yield s
    s.stop()


@pytest.fixture()
def api(stack: Stack) -> Api:
    return Api(stack.url)


@pytest.fixture()
def settings(redis_url: str) -> Settings:
    """The in-process app's settings: the session's Redis, in a database of its
    own (db 1: the stack's workers never see these tasks), a queue nobody reads."""
    return Settings(redis_url=redis_url.rsplit("/", 1)[0] + "/1", queue=INPROCESS_QUEUE,
                    sync_wait=0.0, rate_limit="off")


@pytest.fixture()
def inprocess_redis(settings: Settings) -> Iterator[redis.Redis]:
    """The in-process app's Redis database, emptied after each test."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture()
def app(settings: Settings, inprocess_redis: redis.Redis) -> Any:
    """The gateway's Flask app in this process (no HTTP server, no workers)."""
    app = create_app(settings)
    app.config.update(TESTING=True)
    return app


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture()
def live_app(app: Any) -> Iterator[str]:
    """The in-process app served over real HTTP on loopback, for the CLI and the
    browser where no worker is needed; yields its URL."""
    with serve(app) as url:
        yield url


@pytest.fixture(scope="session")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One live `wasmq up` (embedded Redis, its own data dir) for the client and
    CLI tests, started the way a user starts it; yields its URL."""
    running = start_up(tmp_path_factory.mktemp("up"))
    yield running.url
    running.stop()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (`.ci/run` installs it in CI)."""
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run should have installed it")
        pytest.skip("browser tests need Debian's Chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context per test; page errors fail the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


class Recorder:
    """A loopback HTTP server that answers an empty function list and records
    the Authorization header of every request (what a client sent, seen from
    the other side)."""

    def __init__(self) -> None:
        self.authorization: list[str | None] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                recorder.authorization.append(self.headers.get("Authorization"))
                body = b'{"functions": [], "total": 0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture()
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()
