"""The HTTP routes: /chat/completions, /embeddings, /models, /usage. Joins providers to HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import struct
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from axione_asgi.cache import CACHE_HEADER, ChatCache
from axione_asgi.config import AxioneConfig
from axione_asgi.dispatch import Endpoint, Handler
from axione_asgi.errors import (
    AxioneError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    RequestTooLarge,
    UpstreamTimeout,
)
from axione_asgi.keys import KeyRecord
from axione_asgi.observability.context import upstream_call
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ImagePart,
    Usage,
    now,
)
from axione_asgi.openapi import openapi_document
from axione_asgi.providers.base import ModelRoute, Provider, ProviderRegistry
from axione_asgi.quota import QuotaService
from axione_asgi.resilience import RetryPolicy, first_success
from axione_asgi.scope import QuotaHandle, exempt_from_quota, key_of, quota_of, request_id_of
from axione_asgi.sse import DONE, encode_data
from axione_asgi.streaming import ClientGone, EventStreamResponse, unless_disconnected

__all__ = ["GatewayRoutes", "estimate_prompt_tokens", "parse_body", "parse_chat_request"]

logger = logging.getLogger("axione")

T = TypeVar("T")

# The models' serializers, called for bytes directly (no str round trip).
_CHUNK_JSON = ChatCompletionChunk.__pydantic_serializer__
_COMPLETION_JSON = ChatCompletion.__pydantic_serializer__

JSON = "application/json"
# Reserved for the answer when a client sets no output cap.
DEFAULT_OUTPUT_RESERVE = 1024
# What an image costs in the estimate, before the upstream reports the real count.
IMAGE_TOKEN_ESTIMATE = 765


def estimate_prompt_tokens(request: ChatCompletionRequest) -> int:
    """A quick upper-leaning guess of prompt tokens: 4 characters a token."""
    chars = 0
    images = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif content:
            for part in content:
                if isinstance(part, ImagePart):
                    images += 1
                else:
                    chars += len(getattr(part, "text", "") or "")
        for call in message.tool_calls or ():
            chars += len(call.function.name) + len(call.function.arguments)
    for tool in request.tools or ():
        chars += len(tool.function.name) + len(json.dumps(tool.function.parameters or {}))
    return math.ceil(chars / 4) + 4 * len(request.messages) + images * IMAGE_TOKEN_ESTIMATE


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


def _validation_error(exc: ValidationError) -> InvalidRequest:
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


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: bytes) -> M:
    """Parse and validate a JSON body into `model`, or raise a SPEC 400."""
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate a chat request body, or raise a SPEC 400."""
    return parse_body(ChatCompletionRequest, body)


def _token_count(embed: EmbeddingRequest) -> int:
    items = embed.input if isinstance(embed.input, list) else []
    return sum(len(i) if isinstance(i, list) else 1 for i in items)


def _base64_floats(vector: list[float]) -> str:
    # OpenAI's base64 encoding: the little-endian float32 array.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refusing it once it passes `limit` bytes or `timeout_s` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"The request body is over the limit of {limit} bytes")
    receive = request.receive
    first = await receive()
    # Most bodies arrive in one message: no timer is armed for them.
    if first["type"] == "http.request" and not first.get("more_body", False):
        body: bytes = first.get("body", b"")
        if len(body) > limit:
            raise RequestTooLarge(f"The request body is over the limit of {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    message = first
    try:
        async with asyncio.timeout(timeout_s):
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
    except TimeoutError:
        raise InvalidRequest(
            f"The request body was not received within {timeout_s:g} seconds",
            code="request_timeout",
            status=408,
        ) from None
    return b"".join(chunks)


Batch = list[ChatCompletionChunk]
Opened = tuple[Batch | None, AsyncIterator[Batch]]


def _route(path: str, handler: Handler, method: str) -> Route:
    # An Endpoint: Starlette adds no per-request layers, and ExactRoutes finds it by path.
    return Route(path, Endpoint(handler), methods=[method], name=handler.__name__)


class GatewayRoutes:
    """The gateway's endpoints over one provider registry and quota service."""

    def __init__(
        self,
        registry: ProviderRegistry,
        quota: QuotaService,
        config: AxioneConfig,
        *,
        cache: ChatCache | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.quota = quota
        self.config = config
        self.max_body_bytes = config.max_body_bytes
        self.retry = RetryPolicy(
            max_retries=config.retry.max_retries,
            backoff_s=config.retry.backoff_s,
            backoff_max_s=config.retry.backoff_max_s,
            deadline_s=config.retry.deadline_s,
        )
        self.first_byte_timeouts = {
            name: cfg.first_byte_timeout_s
            for name, cfg in config.providers.items()
            if cfg.first_byte_timeout_s
        }
        self._openapi_body: bytes | None = None
        created = now()
        self._models = [
            {"id": r.public_id, "object": "model", "created": created, "owned_by": r.provider_name}
            for r in registry.routes()
        ]
        self._models_body = json.dumps({"object": "list", "data": self._models}).encode()
        self._model_bodies = {m["id"]: json.dumps(m).encode() for m in self._models}

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes, relative to wherever the app is mounted."""
        return [
            _route("/chat/completions", self.chat_completions, "POST"),
            _route("/models", self.list_models, "GET"),
            _route("/models/{model_id:path}", self.get_model, "GET"),
            _route("/embeddings", self.embeddings, "POST"),
            _route("/usage", self.usage, "GET"),
            _route("/openapi.json", self.openapi, "GET"),
        ]

    # -- /openapi.json (public) ----------------------------------------------
    async def openapi(self, request: Request) -> Response:
        if self._openapi_body is None:
            self._openapi_body = json.dumps(openapi_document()).encode()
        return Response(self._openapi_body, media_type=JSON)

    # -- /models -------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        exempt_from_quota(request.scope)  # metadata: not a counted request
        return Response(self._models_body, media_type=JSON)

    async def get_model(self, request: Request) -> Response:
        exempt_from_quota(request.scope)
        model_id = request.path_params["model_id"]
        body = self._model_bodies.get(model_id)
        if body is None:
            raise ModelNotFound(model_id)
        return Response(body, media_type=JSON)

    # -- /usage --------------------------------------------------------------
    async def usage(self, request: Request) -> Response:
        key = key_of(request.scope)
        if key is None:
            raise InvalidRequest("/usage needs an authenticated key", code="missing_api_key")
        exempt_from_quota(request.scope)  # SPEC 8: /usage is not itself counted
        report = await self.quota.usage(key)
        return Response(json.dumps(report).encode(), media_type=JSON)

    # -- /embeddings ---------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        body = await read_body(request, self.max_body_bytes, self.config.request.body_timeout_s)
        embed = parse_body(EmbeddingRequest, body)
        route = self.registry.resolve_embedding(embed.model)
        key = key_of(request.scope)
        if key is not None and not key.may_use(route.public_id):
            raise ModelNotAllowed(route.public_id)
        texts = embed.texts()
        estimate = (
            math.ceil(sum(len(t) for t in texts) / 4) if texts is not None else _token_count(embed)
        )
        quota = quota_of(request.scope)
        if quota is not None:
            await quota.admit(
                reserve_tokens=estimate, model=route.public_id, provider=route.provider_name
            )

        async def ask(r: ModelRoute) -> EmbeddingResponse:
            async with upstream_call(request.scope, r):
                return await r.embedder.embed(embed, r.model)

        route, answer = await first_success([route], ask, self.retry)
        answer.model = route.public_id
        if embed.encoding_format == "base64":
            for item in answer.data:
                if isinstance(item.embedding, list):
                    item.embedding = _base64_floats(item.embedding)
        used = answer.usage.prompt_tokens or answer.usage.total_tokens
        if not used:
            # The upstream counted nothing (Gemini): show the client what is counted.
            answer.usage.prompt_tokens = answer.usage.total_tokens = estimate
        if quota is not None:
            quota.report(prompt_tokens=used or estimate, completion_tokens=0, estimated=not used)
        return Response(answer.model_dump_json(), media_type=JSON)

    # -- /chat/completions ---------------------------------------------------
    def candidates(self, chat: ChatCompletionRequest, key: KeyRecord | None) -> list[ModelRoute]:
        """The models to try, in order: the request's, its `models`, the config's fallbacks."""
        names = [chat.model, *(chat.models or ())]
        names += [m for name in list(names) for m in self.config.fallbacks.get(name, ())]
        routes: list[ModelRoute] = []
        for name in dict.fromkeys(names):
            route = self.registry.resolve(name)
            if key is not None and not key.may_use(route.public_id):
                raise ModelNotAllowed(route.public_id)
            routes.append(route)
        return routes

    async def chat_completions(self, request: Request) -> Response:
        body = await read_body(request, self.max_body_bytes, self.config.request.body_timeout_s)
        chat = parse_chat_request(body)
        if len(chat.messages) > self.config.request.max_messages:
            raise InvalidRequest(
                f"Too many messages: {len(chat.messages)} (the limit is "
                f"{self.config.request.max_messages})",
                param="messages",
            )
        key = key_of(request.scope)
        candidates = self.candidates(chat, key)
        primary = candidates[0]
        prompt_estimate = estimate_prompt_tokens(chat)
        quota = quota_of(request.scope)
        cache_key = None
        if self.cache is not None:
            cache_key = self.cache.key_for(chat, request.headers, key.id if key else None)
            cached = await self.cache.get(cache_key) if cache_key is not None else None
            if cached is not None:
                if quota is not None:
                    # A hit costs one request and no tokens.
                    await quota.admit(model=primary.public_id, provider=primary.provider_name)
                    quota.report(prompt_tokens=0, completion_tokens=0, cache_hit=True)
                return Response(cached, media_type=JSON, headers={CACHE_HEADER: "hit"})
        if quota is not None:
            await quota.admit(
                reserve_tokens=prompt_estimate + (chat.output_cap or DEFAULT_OUTPUT_RESERVE),
                model=primary.public_id,
                provider=primary.provider_name,
            )
        if chat.stream:
            return await self._stream(chat, candidates, quota, prompt_estimate, request)

        async def ask(route: ModelRoute) -> ChatCompletion:
            async with upstream_call(request.scope, route):
                return await route.provider.chat(chat, route.model)

        try:
            route, completion = await unless_disconnected(
                request.receive, lambda: first_success(candidates, ask, self.retry)
            )
        except ClientGone:
            if quota is not None:
                quota.report(prompt_tokens=prompt_estimate, completion_tokens=0, estimated=True)
            return Response(status_code=499)
        completion.model = route.public_id
        if quota is not None:
            if route is not primary:
                quota.answered_by(model=route.public_id, provider=route.provider_name)
            chars_out = sum(len(c.message.content or "") for c in completion.choices)
            _report(quota, completion.usage, prompt_estimate, chars_out)
        body = _COMPLETION_JSON.to_json(completion, exclude_none=True)
        if cache_key is None or self.cache is None:
            return Response(body, media_type=JSON)
        await self.cache.put(cache_key, body)
        return Response(body, media_type=JSON, headers={CACHE_HEADER: "miss"})

    async def _open_stream(self, chat: ChatCompletionRequest, route: ModelRoute) -> Opened:
        chunks = _batches(route.provider, chat, route.model)
        # The first chunk is awaited here, so an upstream that fails before its
        # first byte still gets a proper HTTP status, a retry or a fallback.
        timeout = self.first_byte_timeouts.get(route.provider_name)
        try:
            if timeout is None:
                return await anext(chunks, None), chunks
            async with asyncio.timeout(timeout):
                return await anext(chunks, None), chunks
        except BaseException as exc:
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    await closer()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    f"Provider '{route.provider_name}' sent nothing within {timeout:g} seconds"
                ) from None
            raise

    async def _stream(
        self,
        chat: ChatCompletionRequest,
        candidates: list[ModelRoute],
        quota: QuotaHandle | None,
        prompt_estimate: int,
        request: Request,
    ) -> Response:
        async def open_stream(route: ModelRoute) -> Opened:
            async with upstream_call(request.scope, route):  # until the first chunk
                return await self._open_stream(chat, route)

        route, (first, chunks) = await first_success(candidates, open_stream, self.retry)
        if quota is not None and route is not candidates[0]:
            quota.answered_by(model=route.public_id, provider=route.provider_name)
        events = _events(
            first, chunks, chat, route, quota, prompt_estimate, request_id_of(request.scope)
        )
        return EventStreamResponse(
            events,
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )


def _batches(provider: Provider, chat: ChatCompletionRequest, model: str) -> AsyncIterator[Batch]:
    """The provider's chunks in batches: its own (`BatchStreamingProvider`), or one chunk each."""
    stream_batches = getattr(provider, "stream_batches", None)
    if stream_batches is not None:
        batches: AsyncIterator[Batch] = aiter(stream_batches(chat, model))
        return batches
    return _one_by_one(provider.stream(chat, model))


async def _one_by_one(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[Batch]:
    try:
        async for chunk in chunks:
            yield [chunk]
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()


def _report(quota: QuotaHandle, usage: Usage | None, prompt_estimate: int, chars_out: int) -> None:
    if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
        quota.report(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
    else:
        quota.report(
            prompt_tokens=prompt_estimate,
            completion_tokens=math.ceil(chars_out / 4),
            estimated=True,
        )


async def _events(
    first: Batch | None,
    batches: AsyncIterator[Batch],
    chat: ChatCompletionRequest,
    route: ModelRoute,
    quota: QuotaHandle | None,
    prompt_estimate: int,
    request_id: str | None,
) -> AsyncIterator[bytes]:
    """SSE bytes for each batch of chunks as it arrives; usage settles even on a cut."""
    wants_usage = chat.wants_usage_chunk
    public_id = route.public_id
    usage: Usage | None = None
    chars_out = 0
    batch = first
    usage_chunk: ChatCompletionChunk | None = None
    next_batch = batches.__anext__
    try:
        while batch is not None:
            out: list[bytes] = []
            for chunk in batch:
                # Straight into the field: what pydantic's __setattr__ does, less
                # its dispatch, which showed per chunk (validation is off for
                # assignment, and `model` is always a field that was set).
                chunk.__dict__["model"] = public_id
                if chunk.usage is not None:
                    usage = chunk.usage
                    if wants_usage and chunk.choices:
                        # Some upstreams (Mistral) put usage on the finish chunk; SPEC
                        # wants it in a chunk of its own, with no choices, at the end.
                        usage_chunk = ChatCompletionChunk(
                            id=chunk.id, created=chunk.created, model=public_id, usage=usage
                        )
                    if not wants_usage or chunk.choices:
                        chunk.usage = None
                        if not chunk.choices:
                            continue  # a usage-only chunk nobody asked for
                for choice in chunk.choices:
                    if choice.delta.content:
                        chars_out += len(choice.delta.content)
                out.append(encode_data(_CHUNK_JSON.to_json(chunk, exclude_none=True)))
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
            try:
                batch = await next_batch()
            except StopAsyncIteration:
                batch = None
        if usage_chunk is not None:
            yield encode_data(usage_chunk.model_dump_json(exclude_none=True).encode())
        yield DONE
    except AxioneError as exc:
        yield encode_data(exc.body())
    except Exception:
        logger.exception("stream failed in request %s", request_id)
        failure = AxioneError(f"The stream failed unexpectedly; request id {request_id}")
        yield encode_data(failure.body())
    finally:
        if quota is not None:
            _report(quota, usage, prompt_estimate, chars_out)
        closer = getattr(batches, "aclose", None)
        if closer is not None:
            await closer()
