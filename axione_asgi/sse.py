"""Server-sent events: encode ours, parse the upstreams'."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

__all__ = ["DONE", "SSEDecoder", "SSEEvent", "aiter_sse", "encode_data"]

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


class SSEDecoder:
    """Parses an event stream from its raw bytes, block by block, as they arrive.

    `feed` takes whatever the network delivered (a block may end mid-line, even
    between a CR and its LF) and returns the events it completed; `close`
    returns the one left open at the end. The same rules as `aiter_sse`, but
    one call per network read instead of one async step per line: on a
    stream of small events that is most of the parsing cost.
    """

    __slots__ = ("_data", "_event", "_id", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, block: bytes) -> list[SSEEvent]:
        """The events that `block` completes, in order."""
        buffer = self._pending + block if self._pending else block
        held_cr = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                # Maybe half of a CRLF: decided by the next block.
                buffer, held_cr = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._pending = lines.pop() + held_cr
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            # The common line first, inline: a stream is mostly `data:` lines.
            if line[:5] == b"data:":
                raw = line[6:] if line[5:6] == b" " else line[5:]
                data.append(raw.decode("utf-8", "replace"))
            elif line:
                self._line(line, events)
            elif data:
                events.append(SSEEvent(self._event, "\n".join(data), self._id))
                self._event, self._data = "message", []
                data = self._data
            else:
                self._event = "message"
        return events

    def close(self) -> list[SSEEvent]:
        """The event left open when the stream ended (some servers omit the last blank line)."""
        events: list[SSEEvent] = []
        if self._pending:
            self._line(self._pending.rstrip(b"\r"), events)
            self._pending = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(self._event, "\n".join(self._data), self._id))
            self._event, self._data = "message", []
            return
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, sep, raw = line.partition(b":")
        if sep and raw[:1] == b" ":
            raw = raw[1:]
        if name == b"data":
            self._data.append(raw.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = raw.decode("utf-8", "replace") or "message"
        elif name == b"id":
            self._id = raw.decode("utf-8", "replace")
