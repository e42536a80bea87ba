"""Server-sent events: encode ours, parse the upstreams'."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

__all__ = [
    "DONE",
    "EventTooLarge",
    "SSEDecoder",
    "SSEEvent",
    "aiter_sse",
    "encode_data",
]

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


class EventTooLarge(ValueError):
    """One event grew past the decoder's `max_event_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event is over {limit} bytes")
        self.limit = limit


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

    The work is linear in the bytes fed: a block is scanned once, and a line
    that spans blocks is kept as its pieces and joined once, when it ends (a
    100 MB line in 64 KiB reads is 100 MB of work, not 80 GB). `pending_bytes`
    is the size of the event being received, for a caller that bounds it.
    """

    __slots__ = (
        "_after_cr",
        "_data",
        "_data_bytes",
        "_event",
        "_id",
        "_line",
        "_line_bytes",
        "max_event_bytes",
    )

    def __init__(self, max_event_bytes: int = 0) -> None:
        # One event's bound (0: none): past it `feed` raises `EventTooLarge`.
        self.max_event_bytes = max_event_bytes
        # The unfinished line, in the pieces it arrived in, and their size.
        self._line: list[bytes] = []
        self._line_bytes = 0
        # The last block ended in a CR (a line end): an LF first in the next is its pair.
        self._after_cr = False
        self._event = "message"
        self._data: list[str] = []
        self._data_bytes = 0
        self._id: str | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes of the event being received: its data lines so far and the unfinished line."""
        return self._data_bytes + self._line_bytes

    def feed(self, block: bytes) -> list[SSEEvent]:
        """The events that `block` completes, in order."""
        if self._after_cr and block:
            self._after_cr = False
            if block[0] == 0x0A:  # the LF of a CRLF cut between two blocks
                block = block[1:]
        if b"\r" in block:
            self._after_cr = block.endswith(b"\r")
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = block.split(b"\n")
        tail = lines.pop()
        pieces = self._line
        if not lines:  # no line ends here: only the unfinished line grows
            if tail:
                pieces.append(tail)
                self._line_bytes += len(tail)
                if self.max_event_bytes and self.pending_bytes > self.max_event_bytes:
                    raise EventTooLarge(self.max_event_bytes)
            return []
        if pieces:
            pieces.append(lines[0])
            lines[0] = b"".join(pieces)
            pieces.clear()
        if tail:
            pieces.append(tail)
        self._line_bytes = len(tail)
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    if self.max_event_bytes and self._data_bytes > self.max_event_bytes:
                        raise EventTooLarge(self.max_event_bytes)
                    events.append(SSEEvent(self._event, "\n".join(data), self._id))
                    data = self._data = []
                    self._data_bytes = 0
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
                self._data_bytes += len(raw)
            elif name == b"event":
                self._event = value or "message"
            elif name == b"id":
                self._id = value
        limit = self.max_event_bytes
        if limit and self._data_bytes + self._line_bytes > limit:
            raise EventTooLarge(limit)
        return events

    def close(self) -> list[SSEEvent]:
        """The event left open when the stream ended (some servers omit the last blank line)."""
        return self.feed(b"\n\n")
