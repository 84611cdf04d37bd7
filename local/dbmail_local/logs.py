"""Logging setup: JSON lines in the background processes' logs, short text lines for the CLI.

Fields passed with ``extra=`` become JSON keys (or ``key=value`` pairs in text), so the logs can
be filtered with jq or grep without parsing free text.
"""

import json
import logging
import sys
from datetime import UTC, datetime

_STANDARD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _extra_fields(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the same shape Powertools gives the handlers' own logs."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extra_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``dbmail-local: message key=value`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _extra_fields(record).items())
        line = f"dbmail-local: {record.getMessage()}" + (f" {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(*, json_lines: bool) -> None:
    """Sends dbmail_local's records (INFO and up) and everyone else's warnings to stderr.

    dbmail_local has its own handler because Powertools filters the root handlers to drop
    records of loggers whose names start with its service name ("dbmail"). The root logger
    stays at WARNING like in the Lambda runtime, so a handler's plain ``logging.info`` is as
    quiet locally as it is in AWS.
    """
    formatter = JsonFormatter() if json_lines else TextFormatter()
    for name, level in (("", logging.WARNING), ("dbmail_local", logging.INFO)):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
    logging.getLogger("dbmail_local").propagate = False
