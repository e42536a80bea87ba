"""Reading and validating request bodies into pydantic models, for every dialect."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from axione_asgi.errors import InvalidRequest, RequestTooLarge

__all__ = ["parse_body", "parse_json_request", "read_body", "validation_error"]

M = TypeVar("M", bound=BaseModel)

_UNION_LABEL = re.compile(
    r"^(str|int|float|bool|none|list\[.*|dict\[.*|literal\[.*|tagged-union\[.*"
    r"|function-.*|[A-Z]\w*)$"
)


def _param(loc: tuple[int | str, ...]) -> str | None:
    """`messages[0].content` from pydantic's loc, without union member labels."""
    out = ""
    drop_tag = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if _UNION_LABEL.match(part):
            # The element after a tagged union's label is the tag, not a field.
            drop_tag = drop_tag or "tagged-union[" in part
            continue
        if drop_tag:
            drop_tag = False
            continue
        out += ("." if out else "") + part
    return out or None


def validation_error(exc: ValidationError) -> InvalidRequest:
    """The SPEC 400 for a pydantic failure: the deepest place, and what it wanted."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] in ("json_invalid", "json_type"):
        return InvalidRequest("The request body is not valid JSON", code="invalid_json")
    if first["type"] == "model_type" and not first["loc"]:
        return InvalidRequest("The request body must be a JSON object", code="invalid_json")
    # The deepest error of a failed union says the most; its siblings at the
    # same place say what else would have been accepted.
    best = max(errors, key=lambda e: len(e["loc"]))
    param = _param(tuple(best["loc"]))
    same = [e["msg"] for e in errors if _param(tuple(e["loc"])) == param]
    message = (
        ", or ".join(dict.fromkeys(same)) if len(best["loc"]) == len(first["loc"]) else best["msg"]
    )
    code = "missing_field" if best["type"] == "missing" else "invalid_value"
    where = f"'{param}'" if param else "The request"
    return InvalidRequest(f"{where}: {message}", code=code, param=param)


def parse_json_request(body: bytes) -> dict[str, Any]:
    """A body as a JSON object naming its `model` (what every dialect's route needs), or a 400.

    For the dialects whose bodies go upstream as sent: parsed, not validated
    into a model, so fields this gateway does not know survive pass-through.
    """
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model': Field required", code="missing_field", param="model")
    return data


def parse_body(model: type[M], body: bytes) -> M:
    """Parse and validate a JSON body into `model`, or raise a SPEC 400."""
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refusing it once it passes `limit` bytes or `timeout_s` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"The request body is over the limit of {limit} bytes")
    receive = request.receive
    # Armed before the first receive(): a client that sends its headers and
    # then nothing is cut as one that trickles its body is. A bare timer, not
    # `asyncio.timeout`: this runs on every request, and the timer costs a
    # fraction of it (most bodies are there at once, and it never fires).
    deadline = _Deadline(timeout_s)
    try:
        message = await receive()
        # Most bodies arrive in one message.
        if message["type"] == "http.request" and not message.get("more_body", False):
            body: bytes = message.get("body", b"")
            if len(body) > limit:
                raise RequestTooLarge(f"The request body is over the limit of {limit} bytes")
            return body
        chunks: list[bytes] = []
        size = 0
        while True:
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"The request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
            message = await receive()
    except asyncio.CancelledError:
        if deadline.caught():
            raise InvalidRequest(
                f"The request body was not received within {timeout_s:g} seconds",
                code="request_timeout",
                status=408,
            ) from None
        raise
    finally:
        deadline.stop()
    return b"".join(chunks)


class _Deadline:
    """Cancels the current task once `timeout_s` pass, unless stopped first."""

    __slots__ = ("expired", "handle", "task")

    def __init__(self, timeout_s: float) -> None:
        self.expired = False
        self.task = asyncio.current_task()
        self.handle = asyncio.get_running_loop().call_later(timeout_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.task is not None:
            self.task.cancel()

    def caught(self) -> bool:
        """In an `except CancelledError`: whether this deadline (only) caused it."""
        return self.expired and self.task is not None and self.task.uncancel() == 0

    def stop(self) -> None:
        self.handle.cancel()
