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

    The same rules as `SSEDecoder`, which does the parsing, for a source that
    already split the stream into lines.
    """
    decoder = SSEDecoder()
    async for line in lines:
        for event in decoder.feed(line.rstrip("\r\n").encode() + b"\n"):
            yield event
    for event in decoder.close():
        yield event


class SSEDecoder:
    """Parses an event stream from its raw bytes, block by block, as they arrive.

    Follows the WHATWG rules that matter for LLM upstreams: lines end in LF,
    CRLF or CR; comments start with ':'; one leading space after the colon is
    dropped; several `data` lines join with newlines; a blank line dispatches.
    `feed` takes whatever the network delivered (a block may end mid-line, even
    between a CR and its LF) and returns the events it completed; `close`
    returns the one left open at the end, since some servers omit the last
    blank line. One call per network read, not one async step per line: on a
    stream of small events that was most of the parsing cost.
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
            if not line:
                if data:
                    events.append(SSEEvent(self._event, "\n".join(data), self._id))
                    data = self._data = []
                self._event = "message"
                continue
            if line[0] == 0x3A:  # ":" starts a comment
                continue
            name, sep, raw = line.partition(b":")
            if sep and raw[:1] == b" ":
                raw = raw[1:]
            value = raw.decode("utf-8", "replace")
            if name == b"data":
                data.append(value)
            elif name == b"event":
                self._event = value or "message"
            elif name == b"id":
                self._id = value
        return events

    def close(self) -> list[SSEEvent]:
        """The event left open when the stream ended (some servers omit the last blank line)."""
        return self.feed(b"\n\n")
