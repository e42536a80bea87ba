"""Server-sent events: encode ours, parse the upstreams'."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

__all__ = ["DONE", "SSEEvent", "aiter_sse", "encode_data"]

DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event: its `event` name (default "message") and `data`."""

    event: str = "message"
    data: str = ""
    id: str | None = None


def encode_data(payload: bytes) -> bytes:
    """One `data:` event. JSON payloads never hold a raw newline, so one line is enough."""
    return b"data: " + payload + b"\n\n"


async def aiter_sse(lines: AsyncIterable[str]) -> AsyncIterator[SSEEvent]:
    """Parse decoded lines (as `httpx.Response.aiter_lines` yields them) into events.

    Follows the WHATWG rules that matter for LLM upstreams: comments start with
    ':', one leading space after the colon is dropped, several `data` lines join
    with newlines, a blank line dispatches. An event left open at the end of the
    stream is dispatched too, since some servers omit the last blank line.
    """
    event = "message"
    data: list[str] = []
    event_id: str | None = None
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SSEEvent(event, "\n".join(data), event_id)
            event, data = "message", []
            continue
        if line[0] == ":":
            continue
        field, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value or "message"
        elif field == "id":
            event_id = value
    if data:
        yield SSEEvent(event, "\n".join(data), event_id)
