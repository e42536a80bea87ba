"""The OpenAI Responses dialect: /responses and its stored state, to every backend.

To an `openai`-kind backend that serves `/responses` (`responses = "native"`,
its default) the client's body goes as sent but for its model id, and the
answer and its events come back as written but for `model`. Every other
backend is reached through the hub (`responses_format`). Stored responses
(`store`, the default) are kept per key in the response store, so
`previous_response_id`, `GET` and `DELETE` work whatever backend answered.
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
from axione_asgi.errors import (
    AxioneError,
    ErrorEnvelope,
    InvalidRequest,
    NotFound,
    UpstreamError,
)
from axione_asgi.exchange.estimate import estimate_json_tokens
from axione_asgi.exchange.parsing import parse_json_request, read_body
from axione_asgi.exchange.pipeline import Exchange, Pipeline, open_passed_through
from axione_asgi.ingress.base import JSON, json_answer, route
from axione_asgi.ingress.responses_format import (
    DIALECT,
    ResponsesStreamWriter,
    input_items,
    output_of,
    response_object,
    status_of,
    to_chat,
    usage_object,
    wants_web_search,
)
from axione_asgi.openai_types import ChatCompletionRequest, new_id, now
from axione_asgi.providers.base import ModelRoute, NativeProvider, event_limit, too_large
from axione_asgi.scope import exempt_from_quota, key_of, request_id_of
from axione_asgi.sse import EventTooLarge, SSEDecoder, SSEEvent
from axione_asgi.stores.responses import ResponseStore, StoredResponse
from axione_asgi.streaming import EventStreamResponse, StreamCut
from axione_asgi.transports import UpstreamStream

__all__ = ["RESPONSES_ENVELOPE", "OpenAIResponsesIngress"]

logger = logging.getLogger("axione")

Json = dict[str, Any]

IGNORED_TOOLS_HEADER = "x-axione-ignored-tools"
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class _ResponsesEnvelope:
    """OpenAI's error envelope (SPEC 2); the ledger names the Responses dialect."""

    dialect = DIALECT

    def render(self, exc: AxioneError) -> bytes:
        return exc.body()


RESPONSES_ENVELOPE = _ResponsesEnvelope()


def _load(body: bytes) -> Json:
    """The body as JSON, with the fields the route reads itself checked."""
    data = parse_json_request(body)
    cap = data.get("max_output_tokens")
    if cap is not None and (
        not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap < 2**31
    ):
        raise InvalidRequest(
            "'max_output_tokens': must be a positive integer", param="max_output_tokens"
        )
    for flag in ("stream", "store"):
        if flag in data and data[flag] is not None and not isinstance(data[flag], bool):
            raise InvalidRequest(f"'{flag}': must be a boolean", param=flag)
    previous = data.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise InvalidRequest(
            "'previous_response_id': must be a string", param="previous_response_id"
        )
    return data


# The events that end a Responses stream: anything else last means it was cut.
_LAST_EVENTS = ("response.completed", "response.incomplete", "response.failed", "error")


def _ends(event: SSEEvent) -> bool:
    """Whether an event ends its stream (by its `event:` name, or the `type` in its data)."""
    if event.event in _LAST_EVENTS:
        return True
    head = event.data[:64]
    return any(f'"type":"{kind}"' in head or f'"type": "{kind}"' in head for kind in _LAST_EVENTS)


def _native(target: ModelRoute) -> NativeProvider | None:
    return target.native_face(DIALECT)


def _usage_tokens(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    prompt = prompt if isinstance(prompt, int) and prompt > 0 else 0
    completion = completion if isinstance(completion, int) and completion > 0 else 0
    return (prompt, completion) if prompt or completion else None


def _listed(item: Json, position: int) -> Json:
    """An input item as `input_items` lists it: with an id and a type, content as parts."""
    out = {"type": "message", **item}
    if not out.get("id"):
        out["id"] = f"msg_in{position:06d}"
    if out["type"] == "message":
        content = out.get("content")
        if isinstance(content, str):
            kind = "output_text" if out.get("role") == "assistant" else "input_text"
            out["content"] = [{"type": kind, "text": content}]
        out.setdefault("status", "completed")
    return out


class _Call:
    """One Responses request: its body, the conversation it answers, its hub form when needed."""

    __slots__ = (
        "_chat",
        "body",
        "custom",
        "exchange",
        "ignored",
        "items",
        "previous",
        "response_id",
    )

    def __init__(
        self, body: Json, items: list[Json], previous: StoredResponse | None, exchange: Exchange
    ) -> None:
        self.body = body
        self.items = items  # every input item, those of earlier turns first
        self.previous = previous
        self.exchange = exchange
        self.response_id = f"resp_{new_id('')[1:]}"
        self.ignored: list[str] = []
        self.custom: set[str] = set()
        self._chat: ChatCompletionRequest | None = None

    def chat(self) -> ChatCompletionRequest:
        if self._chat is None:
            self._chat, self.ignored, self.custom = to_chat(
                self.body, self.items, self.body["model"]
            )
        return self._chat

    def native_body(self) -> Json:
        """What a native upstream gets: the body as sent, unless its history is ours alone."""
        if self.previous is None or self.previous.native:
            return self.body
        # The previous turn was answered elsewhere: the upstream has no state for it.
        body = {k: v for k, v in self.body.items() if k != "previous_response_id"}
        body["input"] = self.items
        return body

    def model_for(self, target: ModelRoute) -> str:
        return self.body["model"] if target is self.exchange.primary else target.public_id


class OpenAIResponsesIngress:
    """`/responses` and its stored state over the shared pipeline."""

    def __init__(self, pipeline: Pipeline, config: AxioneConfig, store: ResponseStore) -> None:
        self.pipeline = pipeline
        self.config = config
        self.store = store
        self.retention_s = config.responses.retention_s

    def routes(self) -> list[BaseRoute]:
        return [
            route("/responses", self.create, "POST"),
            route("/responses/{response_id}", self.retrieve, "GET"),
            route("/responses/{response_id}", self.delete, "DELETE"),
            route("/responses/{response_id}/input_items", self.input_items, "GET"),
        ]

    def error_envelopes(self) -> Mapping[str, ErrorEnvelope]:
        return {"/responses": RESPONSES_ENVELOPE}

    # -- POST /responses -------------------------------------------------------
    async def create(self, request: Request) -> Response:
        body = await read_body(
            request, self.config.max_body_bytes, self.config.request.body_timeout_s
        )
        data = _load(body)
        key = key_of(request.scope)
        key_id = key.id if key is not None else ""
        previous: StoredResponse | None = None
        history: list[Json] = []
        if data.get("previous_response_id"):
            previous = await self.store.get(key_id, data["previous_response_id"])
            if previous is None:
                raise NotFound(
                    f"Previous response with id '{data['previous_response_id']}' not found.",
                    code="previous_response_not_found",
                    param="previous_response_id",
                )
            history = [*previous.input_items, *previous.response.get("output", [])]
        items = [*history, *input_items(data)]
        if len(items) > self.config.request.max_messages:
            raise InvalidRequest(
                f"Too many input items: {len(items)} (the limit is "
                f"{self.config.request.max_messages})",
                param="input",
            )
        pipeline = self.pipeline
        estimate = estimate_json_tokens(data.get("instructions"), items, data.get("tools"))
        exchange = pipeline.open(request.scope, request.receive, [data["model"]], estimate)
        call = _Call(data, items, previous, exchange)
        # Translated answers only: a pass-through one is the upstream's to cache.
        translated = not data.get("stream") and _native(exchange.primary) is None
        cache_key = pipeline.cache_key_of(exchange, call.chat, request.headers, DIALECT, translated)
        cached = await pipeline.cached(exchange, cache_key)
        if cached is not None:
            return Response(cached, media_type=JSON, headers={CACHE_HEADER: "hit"})
        cap = await exchange.admit(data.get("max_output_tokens"))
        if cap is not None:
            # What is left of the day: the upstream may write no more than that.
            call = _Call({**data, "max_output_tokens": max(16, cap)}, items, previous, exchange)
        if data.get("stream"):
            return await self._stream(call, key_id)
        answer = await pipeline.complete(exchange, lambda target: self._complete(call, target))
        if answer is None:
            return Response(status_code=499)
        response, used, native = answer
        if used is None:
            exchange.report(estimate, 0, estimated=True)
        else:
            exchange.report(*used)
        await self._keep(call, key_id, response, native)
        out = json.dumps(response, ensure_ascii=False, separators=(",", ":")).encode()
        return await json_answer(pipeline, out, cache_key, self._headers(call))

    @staticmethod
    def _headers(call: _Call) -> dict[str, str]:
        ignored = list(call.ignored)
        answered_by = call.exchange.route
        if _native(answered_by) is None and wants_web_search(call.body.get("tools")):
            searches = getattr(answered_by.provider, "searches_web", None)
            if searches is None or not searches(call.chat(), answered_by.model):
                ignored.insert(0, "web_search")  # no search tool of its own serves it here
        return {IGNORED_TOOLS_HEADER: ",".join(ignored)} if ignored else {}

    async def _keep(self, call: _Call, key_id: str, response: Json, native: bool) -> None:
        if call.body.get("store") is False or not isinstance(response.get("id"), str):
            return
        await self.store.put(key_id, StoredResponse(response, call.items, native), self.retention_s)

    async def _complete(
        self, call: _Call, target: ModelRoute
    ) -> tuple[Json, tuple[int, int] | None, bool]:
        provider = _native(target)
        if provider is not None:
            answer = await provider.forward(
                DIALECT, "responses", call.native_body(), target.model, {}
            )
            try:
                response = json.loads(answer.body)
                response["model"] = call.model_for(target)
            except (ValueError, TypeError):
                raise UpstreamError(
                    f"Provider '{target.provider_name}' answered with a malformed response"
                ) from None
            return response, _usage_tokens(response.get("usage")), True
        completion = await target.provider.chat(call.chat(), target.model)
        output, finish = output_of(completion, call.custom)
        usage = completion.usage
        response = response_object(
            call.body,
            response_id=call.response_id,
            model=call.model_for(target),
            output=output,
            usage=usage_object(usage),
            status=status_of(finish),
        )
        used = (usage.prompt_tokens, usage.completion_tokens) if usage else None
        return response, used if used and any(used) else None, False

    async def _stream(self, call: _Call, key_id: str) -> Response:
        exchange = call.exchange
        pipeline = self.pipeline

        async def open_one(target: ModelRoute) -> tuple[Any, Any]:
            provider = _native(target)
            if provider is None:
                return await pipeline.first_batch(call.chat(), target)
            return await open_passed_through(
                provider.forward_stream(DIALECT, "responses", call.native_body(), target.model, {})
            )

        first, rest = await pipeline.first_success(exchange, open_one)
        model = call.model_for(exchange.route)
        if isinstance(first, AsyncExitStack):
            events = self._native_events(call, key_id, first, rest, model)
        else:
            writer = ResponsesStreamWriter(call.body, call.response_id, model, call.custom, now())
            events = self._kept(
                call, key_id, writer, pipeline.write_stream(exchange, first, rest, writer)
            )
        return EventStreamResponse(events, headers={**STREAM_HEADERS, **self._headers(call)})

    async def _kept(
        self, call: _Call, key_id: str, writer: ResponsesStreamWriter, events: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """The stream's events; a response that ended is stored once it has."""
        try:
            async for event in events:
                yield event
        finally:
            final = writer.final
            if final is not None and final["status"] != "failed":
                with anyio.CancelScope(shield=True):
                    await self._keep(call, key_id, final, False)

    async def _native_events(
        self, call: _Call, key_id: str, stack: AsyncExitStack, upstream: UpstreamStream, model: str
    ) -> AsyncIterator[bytes]:
        """The upstream's events as they come, `model` renamed; usage read from the last."""
        exchange = call.exchange
        decoder = SSEDecoder(event_limit(exchange.route))
        final: list[Json] = []
        ended = False
        try:
            async for block in upstream.chunks():
                events = decoder.feed(block)
                if events:
                    ended = ended or any(map(_ends, events))
                    yield b"".join(self._relay(e.event, e.data, model, final) for e in events)
            tail = decoder.close()
            if tail:
                ended = ended or any(map(_ends, tail))
                yield b"".join(self._relay(e.event, e.data, model, final) for e in tail)
            if not ended:
                # Cut before its last event: the client must not take it for an answer.
                short = UpstreamError(
                    f"Provider '{exchange.route.provider_name}' ended the stream before "
                    "the answer was complete"
                )
                payload = {
                    "type": "error",
                    "code": short.code,
                    "message": short.message,
                    "param": None,
                }
                yield f"event: error\ndata: {json.dumps(payload)}\n\n".encode()
        except asyncio.CancelledError:
            cut = StreamCut()  # the server is shutting down (see StreamCut)
            payload = {"type": "error", "code": cut.code, "message": cut.message, "param": None}
            yield f"event: error\ndata: {json.dumps(payload)}\n\n".encode()
            raise
        except Exception as exc:
            if isinstance(exc, EventTooLarge):
                exc = too_large(exchange.route, exc)
            request_id = request_id_of(exchange.scope)
            logger.warning(
                "pass-through stream failed in request %s: %s", request_id, type(exc).__name__
            )
            error = (
                exc
                if isinstance(exc, AxioneError)
                else UpstreamError(f"The upstream stream failed; request id {request_id}")
            )
            payload = {"type": "error", "code": error.code, "message": error.message, "param": None}
            yield f"event: error\ndata: {json.dumps(payload)}\n\n".encode()
        finally:
            used = _usage_tokens(final[-1].get("usage")) if final else None
            if used is None:
                exchange.report_gone()
            else:
                exchange.report(*used)
            with anyio.CancelScope(shield=True):
                await stack.aclose()
                if final and final[-1].get("status") in ("completed", "incomplete"):
                    await self._keep(call, key_id, final[-1], True)

    @staticmethod
    def _relay(name: str, data: str, model: str, final: list[Json]) -> bytes:
        if '"response"' in data:
            try:
                event = json.loads(data)
                response = event["response"]
                response["model"] = model
                if event.get("type") in ("response.completed", "response.incomplete"):
                    final.append(response)
                data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            except (ValueError, KeyError, TypeError):
                pass  # not ours to mend: the client sees what the upstream sent
        lines = "".join("data: " + line + "\n" for line in data.split("\n"))
        return (f"event: {name}\n" if name != "message" else "").encode() + lines.encode() + b"\n"

    # -- the stored state --------------------------------------------------------
    async def _stored(self, request: Request) -> tuple[str, StoredResponse]:
        exempt_from_quota(request.scope)  # reading state: not a counted request
        key = key_of(request.scope)
        response_id = request.path_params["response_id"]
        stored = await self.store.get(key.id if key else "", response_id)
        if stored is None:
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        return response_id, stored

    async def retrieve(self, request: Request) -> Response:
        _, stored = await self._stored(request)
        return Response(json.dumps(stored.response).encode(), media_type=JSON)

    async def delete(self, request: Request) -> Response:
        response_id, _ = await self._stored(request)
        key = key_of(request.scope)
        await self.store.delete(key.id if key else "", response_id)
        body = {"id": response_id, "object": "response.deleted", "deleted": True}
        return Response(json.dumps(body).encode(), media_type=JSON)

    async def input_items(self, request: Request) -> Response:
        _, stored = await self._stored(request)
        items = [_listed(item, i) for i, item in enumerate(stored.input_items)]
        params = request.query_params
        if params.get("order", "desc") != "asc":
            items.reverse()
        after = params.get("after")
        if after:
            ids = [i["id"] for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        try:
            limit = max(1, min(100, int(params.get("limit", "20"))))
        except ValueError:
            raise InvalidRequest("'limit' must be an integer", param="limit") from None
        page = items[:limit]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
        return Response(json.dumps(body).encode(), media_type=JSON)
