"""Logging set-up: plain text for people, one JSON object per line for log collectors. In a
server of several processes each worker's lines name it (``tag_process``): text lines say
``process 1`` before the logger's name, JSON lines carry ``"process": 1``; the supervisor's
lines carry nothing."""

from __future__ import annotations

import json
import logging
import time

__all__ = ["JsonFormatter", "setup_logging", "tag_process"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, process: int | None = None):
        super().__init__()
        self.process = process  # the worker's index in a server of several processes

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process is not None:
            entry["process"] = self.process
        entry.update(getattr(record, "fields", {}))  # logger.info(..., extra={"fields": {...}})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def tag_process(index: int) -> None:
    """In a worker process: every line it logs from now on names it."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter(index) if isinstance(handler.formatter, JsonFormatter)
                             else logging.Formatter(TEXT_FORMAT.replace(
                                 "%(name)s", f"process {index} %(name)s")))
