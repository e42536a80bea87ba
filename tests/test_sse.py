"""Server-sent events: our encoder and the upstream parsers.

Every parsing test runs on both parsers: `aiter_sse` over httpx's own line
splitting, and `SSEDecoder` over the raw blocks (what the providers use).
"""

from __future__ import annotations

import itertools
import json
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
