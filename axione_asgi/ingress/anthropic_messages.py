"""The Anthropic Messages dialect: /messages and /messages/count_tokens, to every backend.

To an `anthropic`-kind backend the client's body goes as sent (its model id
mapped) with its `anthropic-version` and `anthropic-beta`, and the answer
and every event come back as written but for `model`: thinking signatures
stay byte-exact. Every other backend is reached through the hub
(`anthropic_format`). Either way the request travels the shared pipeline:
aliases, fallbacks, retries, quota, cache, ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from axione_asgi.cache import CACHE_HEADER
from axione_asgi.config import AxioneConfig
from axione_asgi.errors import AxioneError, ErrorEnvelope, InvalidRequest, UpstreamError
from axione_asgi.exchange.estimate import estimate_json_tokens
from axione_asgi.exchange.parsing import parse_json_request, read_body
from axione_asgi.exchange.pipeline import Exchange, Pipeline, open_passed_through
from axione_asgi.ingress.anthropic_format import (
    ANTHROPIC_ENVELOPE,
    DIALECT,
    MessagesStreamWriter,
    error_event,
    to_chat,
    to_message,
)
from axione_asgi.ingress.base import JSON, json_answer, route
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.providers.base import (
    ModelRoute,
    NativeProvider,
    TokenCountingProvider,
    event_limit,
    too_large,
)
from axione_asgi.scope import exempt_from_quota, key_of, request_id_of
from axione_asgi.sse import EventTooLarge, SSEDecoder
from axione_asgi.streaming import EventStreamResponse, StreamCut
from axione_asgi.transports import UpstreamStream

__all__ = ["AnthropicMessagesIngress"]

logger = logging.getLogger("axione")

Json = dict[str, Any]

# The events that end an Anthropic stream: anything else last means it was cut.
_LAST_EVENTS = frozenset({"message_stop", "error"})
# Request headers of the dialect that travel to an Anthropic upstream as they are.
_FORWARDED = ("anthropic-version", "anthropic-beta")
IGNORED_TOOLS_HEADER = "x-axione-ignored-tools"
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _load(body: bytes, *, count: bool = False) -> Json:
    """The body as JSON, with the few fields every route needs checked."""
    data = parse_json_request(body)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages': must be a non-empty list of messages",
            param="messages",
            code="missing_field" if messages is None else "invalid_value",
        )
    if not count:
        cap = data.get("max_tokens")
        if cap is None:
            raise InvalidRequest(
                "'max_tokens': Field required", code="missing_field", param="max_tokens"
            )
        if not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap < 2**31:
            raise InvalidRequest("'max_tokens': must be a positive integer", param="max_tokens")
        if "stream" in data and not isinstance(data["stream"], bool):
            raise InvalidRequest("'stream': must be a boolean", param="stream")
    return data


def _native(route: ModelRoute) -> NativeProvider | None:
    return route.native_face(DIALECT)


def _usage_tokens(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) of an Anthropic usage; cache writes and reads are prompt tokens."""
    if not isinstance(usage, dict):
        return None
    prompt = sum(
        v
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        if isinstance(v := usage.get(k), int) and v > 0
    )
    out = usage.get("output_tokens")
    completion = out if isinstance(out, int) and out > 0 else 0
    return (prompt, completion) if prompt or completion else None


def _sse(name: str, data: str) -> bytes:
    lines = data.split("\n")
    return (
        "event: " + name + "\n" + "".join("data: " + line + "\n" for line in lines) + "\n"
    ).encode()


class _Request:
    """One Messages request: its body, the headers it forwards, its hub form when needed."""

    __slots__ = ("_chat", "body", "exchange", "forward", "ignored")

    def __init__(self, body: Json, exchange: Exchange, forward: dict[str, str]) -> None:
        self.body = body
        self.exchange = exchange
        self.forward = forward
        self.ignored: list[str] = []
        self._chat: ChatCompletionRequest | None = None

    def chat(self) -> ChatCompletionRequest:
        """The hub request, made on first use (a pass-through never needs it)."""
        if self._chat is None:
            self._chat, self.ignored = to_chat(self.body, self.body["model"])
        return self._chat

    def model_for(self, route: ModelRoute) -> str:
        """The `model` the answer names when `route` answers."""
        return self.body["model"] if route is self.exchange.primary else route.public_id


class AnthropicMessagesIngress:
    """`POST /messages` and `POST /messages/count_tokens` over the shared pipeline."""

    def __init__(self, pipeline: Pipeline, config: AxioneConfig) -> None:
        self.pipeline = pipeline
        self.config = config

    def routes(self) -> list[BaseRoute]:
        return [
            route("/messages", self.messages, "POST"),
            route("/messages/count_tokens", self.count_tokens, "POST"),
        ]

    def error_envelopes(self) -> Mapping[str, ErrorEnvelope]:
        return {"/messages": ANTHROPIC_ENVELOPE, "/messages/count_tokens": ANTHROPIC_ENVELOPE}

    async def _read(self, request: Request, *, count: bool = False) -> Json:
        body = await read_body(
            request, self.config.max_body_bytes, self.config.request.body_timeout_s
        )
        data = _load(body, count=count)
        if len(data["messages"]) > self.config.request.max_messages:
            raise InvalidRequest(
                f"Too many messages: {len(data['messages'])} (the limit is "
                f"{self.config.request.max_messages})",
                param="messages",
            )
        return data

    @staticmethod
    def _forwarded(request: Request) -> dict[str, str]:
        headers = request.headers
        return {name: value for name in _FORWARDED if (value := headers.get(name))}

    # -- /messages -----------------------------------------------------------
    async def messages(self, request: Request) -> Response:
        data = await self._read(request)
        pipeline = self.pipeline
        estimate = estimate_json_tokens(data.get("system"), data["messages"], data.get("tools"))
        exchange = pipeline.open(request.scope, request.receive, [data["model"]], estimate)
        call = _Request(data, exchange, self._forwarded(request))
        # Translated answers only: a pass-through one is the upstream's to cache.
        translated = not data.get("stream") and _native(exchange.primary) is None
        cache_key = pipeline.cache_key_of(exchange, call.chat, request.headers, DIALECT, translated)
        cached = await pipeline.cached(exchange, cache_key)
        if cached is not None:
            return Response(cached, media_type=JSON, headers={CACHE_HEADER: "hit"})
        cap = await exchange.admit(data["max_tokens"])
        if cap is not None:
            # What is left of the day: the upstream may write no more than that.
            call = _Request({**data, "max_tokens": cap}, exchange, call.forward)
        if data.get("stream"):
            return await self._stream(call)
        answer = await pipeline.complete(exchange, lambda r: self._complete(call, r))
        if answer is None:
            return Response(status_code=499)
        body, used = answer
        if used is None:
            exchange.report(estimate, 0, estimated=True)
        else:
            exchange.report(*used)
        return await json_answer(pipeline, body, cache_key, self._headers(call))

    @staticmethod
    def _headers(call: _Request) -> dict[str, str]:
        return {IGNORED_TOOLS_HEADER: ",".join(call.ignored)} if call.ignored else {}

    async def _complete(
        self, call: _Request, target: ModelRoute
    ) -> tuple[bytes, tuple[int, int] | None]:
        provider = _native(target)
        if provider is not None:
            response = await provider.forward(
                DIALECT, "messages", call.body, target.model, call.forward
            )
            try:
                message = json.loads(response.body)
                message["model"] = call.model_for(target)
            except (ValueError, TypeError):
                raise UpstreamError(
                    f"Provider '{target.provider_name}' answered with a malformed message"
                ) from None
            body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
            return body, _usage_tokens(message.get("usage"))
        completion = await target.provider.chat(call.chat(), target.model)
        message = to_message(completion, call.model_for(target))
        usage = completion.usage
        used = (usage.prompt_tokens, usage.completion_tokens) if usage else None
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        return body, used if used and any(used) else None

    async def _stream(self, call: _Request) -> Response:
        exchange = call.exchange
        pipeline = self.pipeline

        async def open_one(target: ModelRoute) -> tuple[Any, Any]:
            provider = _native(target)
            if provider is None:
                return await pipeline.first_batch(call.chat(), target)
            return await open_passed_through(
                provider.forward_stream(DIALECT, "messages", call.body, target.model, call.forward)
            )

        first, rest = await pipeline.first_success(exchange, open_one)
        model = call.model_for(exchange.route)
        if isinstance(first, AsyncExitStack):
            events = self._native_events(exchange, first, rest, model)
        else:
            writer = MessagesStreamWriter(model, exchange.prompt_estimate)
            events = pipeline.write_stream(exchange, first, rest, writer)
        return EventStreamResponse(events, headers={**STREAM_HEADERS, **self._headers(call)})

    async def _native_events(
        self, exchange: Exchange, stack: AsyncExitStack, upstream: UpstreamStream, model: str
    ) -> AsyncIterator[bytes]:
        """The upstream's events as they come, `model` renamed; usage read on the way."""
        decoder = SSEDecoder(event_limit(exchange.route))
        usage: Json = {}
        ended = False
        try:
            async for block in upstream.chunks():
                events = decoder.feed(block)
                if events:
                    ended = ended or any(e.event in _LAST_EVENTS for e in events)
                    yield b"".join(self._relay(e.event, e.data, usage, model) for e in events)
            tail = decoder.close()
            if tail:
                ended = ended or any(e.event in _LAST_EVENTS for e in tail)
                yield b"".join(self._relay(e.event, e.data, usage, model) for e in tail)
            if not ended:
                # Cut before `message_stop`: the client must not take it for an answer.
                yield error_event(
                    UpstreamError(
                        f"Provider '{exchange.route.provider_name}' ended the stream "
                        "before the answer was complete"
                    )
                )
        except AxioneError as exc:
            yield error_event(exc)
        except EventTooLarge as exc:
            yield error_event(too_large(exchange.route, exc))
        except asyncio.CancelledError:
            yield error_event(StreamCut())  # the server is shutting down (see StreamCut)
            raise
        except Exception as exc:
            request_id = request_id_of(exchange.scope)
            logger.warning(
                "pass-through stream failed in request %s: %s", request_id, type(exc).__name__
            )
            yield error_event(UpstreamError(f"The upstream stream failed; request id {request_id}"))
        finally:
            used = _usage_tokens(usage)
            if used is None:
                exchange.report_gone()
            else:
                exchange.report(*used)
            with anyio.CancelScope(shield=True):
                await stack.aclose()

    @staticmethod
    def _relay(name: str, data: str, usage: Json, model: str) -> bytes:
        if name == "message_start":
            try:
                start = json.loads(data)
                message = start["message"]
                usage.update(message.get("usage") or {})
                message["model"] = model
                data = json.dumps(start, ensure_ascii=False, separators=(",", ":"))
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # not ours to mend: the client sees what the upstream sent
        elif name == "message_delta":
            try:
                counts = json.loads(data).get("usage") or {}
                usage.update({k: v for k, v in counts.items() if v is not None})
            except (ValueError, AttributeError):
                pass
        return _sse(name, data)

    # -- /messages/count_tokens ----------------------------------------------
    async def count_tokens(self, request: Request) -> Response:
        exempt_from_quota(request.scope)  # SPEC 9: not counted against the quota
        data = await self._read(request, count=True)
        target = self.pipeline.candidates([data["model"]], key_of(request.scope))[0]
        provider = _native(target)
        if provider is not None:
            response = await provider.forward(
                DIALECT, "count_tokens", data, target.model, self._forwarded(request)
            )
            return Response(response.body, media_type=JSON)
        estimate = estimate_json_tokens(data.get("system"), data["messages"], data.get("tools"))
        counter = target.provider
        if isinstance(counter, TokenCountingProvider):
            chat, _ = to_chat({**data, "max_tokens": 1}, data["model"])
            estimate = await counter.count_tokens(chat, target.model)
        return Response(json.dumps({"input_tokens": estimate}).encode(), media_type=JSON)
