"""Structured access logs: one line per request on the `axione.access` logger."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any, Literal

__all__ = ["ACCESS_LOGGER", "FIELDS", "AccessLog", "install_access_handler"]

ACCESS_LOGGER = "axione.access"

# The fields of a line, in order. Never the key itself: `key_id` is the id
# `axione keys list` shows, which authenticates nothing.
FIELDS = (
    "request_id",
    "key_id",
    "method",
    "path",
    "status",
    "model",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "upstream_ms",
    "upstream_calls",
    "upstream_error",
    "cache_hit",
)

# Values made of these characters are written bare in key=value lines; any
# other (spaces, quotes, control characters from a decoded path) is quoted
# and escaped, so a client cannot forge a line.
_BARE = re.compile(r"^[A-Za-z0-9_./:@%+,~-]+$")


class AccessLog:
    """Formats and emits access lines, as `key=value` pairs or as JSON.

    Each record also carries the fields as a dict in `record.axione`, for
    handlers that format records themselves.
    """

    def __init__(
        self, fmt: Literal["kv", "json"] = "kv", logger: logging.Logger | None = None
    ) -> None:
        self.format = fmt
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    def enabled(self) -> bool:
        """Whether a line would go anywhere (checked before building one)."""
        return self.logger.isEnabledFor(logging.INFO)

    def line(self, fields: dict[str, Any]) -> str:
        """One access line for `fields` (keys of `FIELDS`; missing ones are `-` or null)."""
        if self.format == "json":
            return json.dumps({name: fields.get(name) for name in FIELDS}, separators=(",", ":"))
        return " ".join([f"{name}={_kv(fields.get(name))}" for name in FIELDS])

    def emit(self, fields: dict[str, Any]) -> None:
        """Log one request at INFO."""
        logger = self.logger
        # As logger.info would, less the walk up the stack for the caller's
        # file and line: the access line's origin is always this method.
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, 0, self.line(fields), (), None,
            "emit", {"axione": fields},
        )  # fmt: skip
        logger.handle(record)


def _kv(value: Any) -> str:
    if value is None:
        return "-"
    kind = type(value)
    if kind is int or kind is float or kind is bool:
        return str(value)  # nothing in a number needs quoting
    text = str(value)
    return text if _BARE.match(text) else json.dumps(text)


def install_access_handler(stream: Any = None) -> None:
    """Send access lines to stderr when nothing else was set up to receive them.

    For `axione serve`: uvicorn configures only its own loggers, so without
    this the lines would be dropped. A host that configures `logging` itself
    (a handler on the root or on `axione.access`) is left alone.
    """
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
