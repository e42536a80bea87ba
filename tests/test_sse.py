"""Server-sent events: our encoder and the upstream parsers.

Every parsing test runs on both parsers: `aiter_sse` over httpx's own line
splitting, and `SSEDecoder` over the raw blocks (what the providers use).
"""

from __future__ import annotations

import itertools
import json
import tracemalloc
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axione_asgi.sse import DONE, SSEDecoder, SSEEvent, aiter_sse, encode_data

pytestmark = pytest.mark.anyio


PARSERS = pytest.mark.parametrize("parser", ["lines", "blocks"])


async def parse(stream: bytes, splits: Sequence[int] = (), parser: str = "lines") -> list[SSEEvent]:
    """Parse `stream` delivered in chunks cut at `splits`, as an upstream response would be."""
    cuts = sorted({s % (len(stream) + 1) for s in splits} | {0, len(stream)})
    blocks = [stream[start:end] for start, end in itertools.pairwise(cuts)]
    if parser == "blocks":
        decoder = SSEDecoder()
        events = [event for block in blocks for event in decoder.feed(block)]
        return events + decoder.close()

    async def chunks() -> AsyncIterator[bytes]:
        for block in blocks:
            yield block

    response = httpx.Response(200, content=chunks())
    return [event async for event in aiter_sse(response.aiter_lines())]


def encode_event(event: SSEEvent) -> bytes:
    """The WHATWG encoding of one event: each data line on its own `data:` field."""
    out = ""
    if event.event != "message":
        out += f"event: {event.event}\n"
    if event.id is not None:
        out += f"id: {event.id}\n"
    for line in event.data.split("\n"):
        out += f"data: {line}\n"
    return (out + "\n").encode()


# Field values cannot hold line breaks; SSE (and httpx) split on \r and \n.
LINE = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
    ),
    max_size=20,
)
EVENTS = st.lists(
    st.builds(
        SSEEvent,
        event=st.sampled_from(["message", "ping", "content_block_delta"]),
        data=st.lists(LINE, min_size=1, max_size=4).map("\n".join),
        id=st.none() | LINE.filter(lambda s: not s.startswith(" ")),
    ),
    max_size=6,
)


@PARSERS
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=EVENTS, splits=st.lists(st.integers(min_value=0), max_size=10))
async def test_events_round_trip_through_any_chunking(
    parser: str, events: list[SSEEvent], splits: list[int]
) -> None:
    stream = b"".join(encode_event(e) for e in events)
    parsed = await parse(stream, splits, parser=parser)
    assert [(e.event, e.data) for e in parsed] == [(e.event, e.data) for e in events]


@PARSERS
@settings(max_examples=100, deadline=None)
@given(
    payloads=st.lists(st.dictionaries(st.text(max_size=8), st.text(max_size=30)), max_size=5),
    splits=st.lists(st.integers(min_value=0), max_size=8),
)
async def test_encode_data_round_trips_json(
    parser: str, payloads: list[dict[str, str]], splits: list[int]
) -> None:
    stream = b"".join(encode_data(json.dumps(p).encode()) for p in payloads) + DONE
    parsed = await parse(stream, splits, parser=parser)
    assert [json.loads(e.data) for e in parsed[:-1]] == payloads
    assert parsed[-1].data == "[DONE]"


def test_encode_data_is_one_data_line_and_a_blank_line() -> None:
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"


@PARSERS
async def test_comments_are_ignored(parser: str) -> None:
    parsed = await parse(b": keep-alive\n\ndata: x\n\n", parser=parser)
    assert [e.data for e in parsed] == ["x"]


@PARSERS
async def test_several_data_lines_join_with_newlines(parser: str) -> None:
    parsed = await parse(b"data: a\ndata: b\n\n", parser=parser)
    assert [e.data for e in parsed] == ["a\nb"]


@PARSERS
async def test_only_one_leading_space_is_dropped(parser: str) -> None:
    parsed = await parse(b"data:  two spaces\ndata:none\n\n", parser=parser)
    assert parsed[0].data == " two spaces\nnone"


@PARSERS
async def test_crlf_line_endings_parse(parser: str) -> None:
    parsed = await parse(b"event: ping\r\ndata: x\r\n\r\n", parser=parser)
    assert [(e.event, e.data) for e in parsed] == [("ping", "x")]


@PARSERS
async def test_event_name_resets_after_each_event(parser: str) -> None:
    parsed = await parse(b"event: ping\ndata: 1\n\ndata: 2\n\n", parser=parser)
    assert [e.event for e in parsed] == ["ping", "message"]


@PARSERS
async def test_an_unterminated_last_event_is_dispatched(parser: str) -> None:
    parsed = await parse(b"data: a\n\ndata: b", parser=parser)
    assert [e.data for e in parsed] == ["a", "b"]


@PARSERS
async def test_blank_lines_without_data_dispatch_nothing(parser: str) -> None:
    assert await parse(b"\n\n\nevent: ping\n\n", parser=parser) == []


@PARSERS
async def test_lone_cr_line_endings_parse(parser: str) -> None:
    parsed = await parse(b"data: a\rdata: b\r\rdata: c\r\r", parser=parser)
    assert [e.data for e in parsed] == ["a\nb", "c"]


async def test_a_crlf_split_between_blocks_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"data: a\r") + decoder.feed(b"\ndata: b\r\n\r") + decoder.feed(b"\n")
    assert [e.data for e in events] == ["a\nb"]


async def test_a_character_split_between_blocks_decodes_whole() -> None:
    payload = "data: h\u00e9llo \u2603\n\n".encode()
    decoder = SSEDecoder()
    events = [e for i in range(len(payload)) for e in decoder.feed(payload[i : i + 1])]
    assert [e.data for e in events] == ["h\u00e9llo \u2603"]


# -- the decoder's work is linear in its input (issue 17) -----------------------


class ReferenceDecoder:
    """The decoder as it was before issue 17 (re-joining its whole pending buffer per block).

    Its events are the reference: the linear decoder must give the same ones.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, block: bytes) -> list[SSEEvent]:
        buffer = self._pending + block if self._pending else block
        held_cr = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
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
            if line[0] == 0x3A:
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
        return self.feed(b"\n\n")


# Streams rich in what the decoder must get right: line endings of every
# kind (a CRLF cut anywhere), fields, comments, blank lines, multibyte text.
STREAM_PIECES = st.sampled_from(
    [
        *(b"\n", b"\r", b"\r\n", b"data", b"data:", b"data: ", b"event: ping", b"id: 7", b":"),
        *(b" ", b"x", b"yz", "h\u00e9".encode(), "\u2603".encode(), b"\xff", b"retry: 5"),
    ]
)
RAW_STREAMS = st.lists(STREAM_PIECES, max_size=40).map(b"".join) | st.binary(max_size=200)


def decoded(decoder: SSEDecoder | ReferenceDecoder, blocks: Sequence[bytes]) -> list[SSEEvent]:
    events = [event for block in blocks for event in decoder.feed(block)]
    return events + decoder.close()


def cut(stream: bytes, splits: Sequence[int]) -> list[bytes]:
    cuts = sorted({s % (len(stream) + 1) for s in splits} | {0, len(stream)})
    return [stream[start:end] for start, end in itertools.pairwise(cuts)]


@settings(max_examples=400, deadline=None)
@given(stream=RAW_STREAMS, splits=st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_gives_the_events_of_the_whole_and_of_the_reference_decoder(
    stream: bytes, splits: list[int]
) -> None:
    whole = decoded(SSEDecoder(), [stream])
    assert decoded(SSEDecoder(), cut(stream, splits)) == whole
    assert decoded(ReferenceDecoder(), cut(stream, splits)) == whole


@settings(max_examples=100, deadline=None)
@given(stream=RAW_STREAMS)
def test_byte_by_byte_gives_the_events_of_the_whole(stream: bytes) -> None:
    blocks = [stream[i : i + 1] for i in range(len(stream))] + [b""]
    assert decoded(SSEDecoder(), blocks) == decoded(ReferenceDecoder(), [stream])


BLOCK = 64 * 1024


def bytes_allocated(decoder: SSEDecoder | ReferenceDecoder, blocks: Sequence[bytes]) -> int:
    """The bytes `decoder.feed` allocates (copies) over `blocks`: the peak of each call, summed.

    Deterministic, unlike a time: each re-join of the pending buffer
    allocates the whole buffer again.
    """
    total = 0
    tracemalloc.start()
    try:
        for block in blocks:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            decoder.feed(block)
            total += tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return total


@pytest.mark.parametrize("line_end", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_a_long_line_in_many_blocks_costs_work_linear_in_its_size(line_end: bytes) -> None:
    block = b"x" * BLOCK
    count = 128  # one 8 MiB data line, in 64 KiB reads
    blocks = [b"data: ", *([block] * count), line_end]
    decoder = SSEDecoder()
    allocated = bytes_allocated(decoder, blocks[:-1])
    # Before: each block re-joined what was pending: 128 * 129 / 2 * 64 KiB = 516 MiB.
    assert allocated < 4 * BLOCK
    assert decoder.pending_bytes == len(b"data: ") + count * BLOCK
    [event] = decoder.feed(blocks[-1]) + decoder.close()
    assert len(event.data) == count * BLOCK
    assert decoder.pending_bytes == 0


def test_the_work_of_a_block_does_not_grow_with_what_is_pending() -> None:
    block = b"y" * BLOCK
    decoder = SSEDecoder()
    decoder.feed(b"data: ")
    for _ in range(256):  # 16 MiB pending
        decoder.feed(block)
    # Two more blocks: O(block) each, not O(pending) (before: 16 MiB copied for 64 KiB).
    assert bytes_allocated(decoder, [block, block]) < 4 * BLOCK


def test_pending_bytes_counts_the_open_event_and_the_unfinished_line() -> None:
    decoder = SSEDecoder()
    assert decoder.pending_bytes == 0
    decoder.feed(b"data: 12345\ndata: 67")
    assert decoder.pending_bytes == len(b"12345") + len(b"data: 67")
    decoder.feed(b"89\r")
    assert decoder.pending_bytes == len(b"12345") + len(b"6789")
    assert [e.data for e in decoder.feed(b"\n\r\n")] == ["12345\n6789"]
    assert decoder.pending_bytes == 0
