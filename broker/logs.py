"""Structured logs: one JSON object per line, carrying the task id.

A task crosses processes and hosts (gateway, queue, worker), so its `tid` is a
field of every line logged while handling it: set once where the task is
known (the submit route, the Celery task's start) and picked up by a logging
filter, so no call site has to pass it along. `WASMQ_LOG_FORMAT=text` gives
plain lines for a terminal.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

TID: ContextVar[str] = ContextVar("wasmq_tid", default="")

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
TEXT_FORMAT = "[%(asctime)s %(levelname)s %(name)s %(process)d] %(message)s"


def bind_tid(tid: str) -> None:
    """Lines logged from here on, in this thread or task, carry `tid`."""
    TID.set(tid)


# Celery attaches a task's arguments to its log records; they hold the input.
PRIVATE_TASK_FIELDS = ("args", "kwargs", "return_value")


class TidFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "tid", ""):
            record.tid = TID.get()
        data = getattr(record, "data", None)
        if isinstance(data, dict) and record.name.startswith("celery"):
            record.data = {k: v for k, v in data.items() if k not in PRIVATE_TASK_FIELDS}
        return True


class TextFormatter(logging.Formatter):
    """Plain lines that end in ` tid=<tid>` when they are about a task and do not
    name it already (Celery's own lines say `wasmq.run[<tid>]`, ours `tid=...`)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tid = getattr(record, "tid", "")
        if tid and tid not in record.getMessage():
            line = f"{line} tid={tid}"
        return line


def setup_logging(fmt: str = "json", level: int | str = logging.INFO,
                  stream: TextIO | None = None) -> None:
    """Configure the root logger of this process (children forked later inherit it)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(TidFilter())
    if fmt == "text":
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    else:
        handler.setFormatter(JsonFormatter(
            JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level",
                                        "name": "logger", "process": "pid"}))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
