"""Daemon log lines: readable text by default, JSON lines for a log pipeline. A line about a resource names it."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from reconciler.base.redact import RedactingFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the resource when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        resource = getattr(record, "resource", None)
        if resource is not None:
            line["resource"] = resource
        if record.exc_info:
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    handler = formatted(logging.StreamHandler(sys.stderr), fmt)
    handler.setLevel(level)  # the daemon's logger goes lower while an apply's client asks for lower (cli/asked_apply)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def formatted(handler: logging.Handler, fmt: str) -> logging.Handler:
    """`handler` writing lines as `fmt` (text or json), secrets redacted."""
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter())
    return handler


def about(resource: object) -> dict[str, dict[str, str]]:
    """`extra=` for a log call about one resource: text lines already start with it; JSON lines get a field."""
    return {"extra": {"resource": str(resource)}}
