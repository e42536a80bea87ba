"""The OpenAI dialect: /chat/completions, /embeddings, /models, /usage, /openapi.json."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from axione_asgi.cache import CACHE_HEADER
from axione_asgi.config import AxioneConfig
from axione_asgi.errors import (
    AxioneError,
    ErrorEnvelope,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
)
from axione_asgi.exchange.estimate import estimate_prompt_tokens
from axione_asgi.exchange.parsing import parse_body, read_body
from axione_asgi.exchange.pipeline import Batch, Exchange, Pipeline
from axione_asgi.ingress.base import JSON, json_answer, route
from axione_asgi.observability.context import upstream_call
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    now,
)
from axione_asgi.openapi import openapi_document
from axione_asgi.providers.base import ModelRoute, ProviderRegistry
from axione_asgi.quota import QuotaService
from axione_asgi.resilience import first_success
from axione_asgi.scope import exempt_from_quota, key_of, quota_of
from axione_asgi.sse import DONE, encode_data
from axione_asgi.streaming import EventStreamResponse

__all__ = ["ChatStreamWriter", "OpenAIChatIngress", "parse_chat_request"]

# The models' serializers, called for bytes directly (no str round trip).
_CHUNK_JSON = ChatCompletionChunk.__pydantic_serializer__
_COMPLETION_JSON = ChatCompletion.__pydantic_serializer__
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate a chat request body, or raise a SPEC 400."""
    return parse_body(ChatCompletionRequest, body)


def _token_count(embed: EmbeddingRequest) -> int:
    items = embed.input if isinstance(embed.input, list) else []
    return sum(len(i) if isinstance(i, list) else 1 for i in items)


def _base64_floats(vector: list[float]) -> str:
    # OpenAI's base64 encoding: the little-endian float32 array.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class ChatStreamWriter:
    """`chat.completion.chunk` events, then `[DONE]` (SPEC section 1)."""

    __slots__ = ("model", "usage_chunk", "wants_usage")

    def __init__(self, model: str, wants_usage: bool) -> None:
        self.model = model
        self.wants_usage = wants_usage
        self.usage_chunk: ChatCompletionChunk | None = None

    def feed(self, batch: Batch) -> bytes:
        out: list[bytes] = []
        model = self.model
        wants_usage = self.wants_usage
        for chunk in batch:
            # Straight into the field: what pydantic's __setattr__ does, less
            # its dispatch, which showed per chunk (validation is off for
            # assignment, and `model` is always a field that was set).
            chunk.__dict__["model"] = model
            if chunk.usage is not None:
                if wants_usage and chunk.choices:
                    # Some upstreams (Mistral) put usage on the finish chunk; SPEC
                    # wants it in a chunk of its own, with no choices, at the end.
                    self.usage_chunk = ChatCompletionChunk(
                        id=chunk.id, created=chunk.created, model=model, usage=chunk.usage
                    )
                if not wants_usage or chunk.choices:
                    chunk.usage = None
                    if not chunk.choices:
                        continue  # a usage-only chunk nobody asked for
            out.append(encode_data(_CHUNK_JSON.to_json(chunk, exclude_none=True)))
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        if self.usage_chunk is None:
            return DONE
        return encode_data(_CHUNK_JSON.to_json(self.usage_chunk, exclude_none=True)) + DONE

    def error(self, exc: AxioneError) -> bytes:
        return encode_data(exc.body())


class OpenAIChatIngress:
    """The OpenAI-dialect endpoints over the shared pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        registry: ProviderRegistry,
        quota: QuotaService,
        config: AxioneConfig,
    ) -> None:
        self.pipeline = pipeline
        self.registry = registry
        self.quota = quota
        self.config = config
        self.max_body_bytes = config.max_body_bytes
        self._openapi_body: bytes | None = None
        created = now()
        self._models = [
            {"id": r.public_id, "object": "model", "created": created, "owned_by": r.provider_name}
            for r in registry.routes()
        ]
        for alias, target in registry.aliases.exact.items():
            self._models.append(
                {
                    "id": alias,
                    "object": "model",
                    "created": created,
                    "owned_by": target.split("/", 1)[0],
                    "alias_of": target,
                }
            )
        self._models_body = json.dumps({"object": "list", "data": self._models}).encode()
        self._model_bodies = {m["id"]: json.dumps(m).encode() for m in self._models}

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes, relative to wherever the app is mounted."""
        return [
            route("/chat/completions", self.chat_completions, "POST"),
            route("/models", self.list_models, "GET"),
            route("/models/{model_id:path}", self.get_model, "GET"),
            route("/embeddings", self.embeddings, "POST"),
            route("/usage", self.usage, "GET"),
            route("/openapi.json", self.openapi, "GET"),
        ]

    def error_envelopes(self) -> Mapping[str, ErrorEnvelope]:
        return {}  # OpenAI's envelope is every path's default

    # -- /openapi.json (public) ----------------------------------------------
    async def openapi(self, request: Request) -> Response:
        if self._openapi_body is None:
            self._openapi_body = json.dumps(openapi_document()).encode()
        return Response(self._openapi_body, media_type=JSON)

    # -- /models -------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        exempt_from_quota(request.scope)  # metadata: not a counted request
        key = key_of(request.scope)
        if key is None or key.models is None:
            return Response(self._models_body, media_type=JSON)
        # A key with an allow-list sees the models it may use (aliases by their target).
        data = [m for m in self._models if key.may_use(str(m.get("alias_of", m["id"])))]
        return Response(json.dumps({"object": "list", "data": data}).encode(), media_type=JSON)

    async def get_model(self, request: Request) -> Response:
        exempt_from_quota(request.scope)
        model_id = request.path_params["model_id"]
        body = self._model_bodies.get(model_id)
        key = key_of(request.scope)
        if body is None or (
            key is not None
            and key.models is not None
            and not key.may_use(self.registry.aliases.exact.get(model_id, model_id))
        ):
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
        target = self.registry.resolve_embedding(embed.model)
        key = key_of(request.scope)
        if key is not None and not key.may_use(target.public_id):
            raise ModelNotAllowed(target.public_id)
        texts = embed.texts()
        estimate = (
            math.ceil(sum(len(t) for t in texts) / 4) if texts is not None else _token_count(embed)
        )
        quota = quota_of(request.scope)
        if quota is not None:
            await quota.admit(
                reserve_tokens=estimate, model=target.public_id, provider=target.provider_name
            )

        async def ask(r: ModelRoute) -> EmbeddingResponse:
            async with upstream_call(request.scope, r):
                return await r.embedder.embed(embed, r.model)

        target, answer = await first_success([target], ask, self.pipeline.retry)
        answer.model = target.public_id
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
    async def chat_completions(self, request: Request) -> Response:
        body = await read_body(request, self.max_body_bytes, self.config.request.body_timeout_s)
        chat = parse_chat_request(body)
        if len(chat.messages) > self.config.request.max_messages:
            raise InvalidRequest(
                f"Too many messages: {len(chat.messages)} (the limit is "
                f"{self.config.request.max_messages})",
                param="messages",
            )
        pipeline = self.pipeline
        exchange = pipeline.open(
            request.scope,
            request.receive,
            [chat.model, *(chat.models or ())],
            lambda kind: estimate_prompt_tokens(chat, kind),
        )
        cache_key = pipeline.cache_key(exchange, chat, request.headers)
        cached = await pipeline.cached(exchange, cache_key)
        if cached is not None:
            return Response(cached, media_type=JSON, headers={CACHE_HEADER: "hit"})
        cap = await exchange.admit(chat.output_cap, chat.n or 1)
        if cap is not None:
            # What is left of the day: the upstream may write no more than that.
            if chat.max_tokens is not None and chat.max_completion_tokens is None:
                chat.max_tokens = cap
            else:
                chat.max_completion_tokens = cap
        if chat.stream:
            return await self._stream(exchange, chat)
        completion = await pipeline.chat(exchange, chat)
        if completion is None:
            return Response(status_code=499)
        completion.model = exchange.model_name(chat.model)
        out = _COMPLETION_JSON.to_json(completion, exclude_none=True)
        return await json_answer(pipeline, out, cache_key)

    async def _stream(self, exchange: Exchange, chat: ChatCompletionRequest) -> Response:
        first, batches = await self.pipeline.open_stream(exchange, chat)
        writer = ChatStreamWriter(exchange.model_name(chat.model), chat.wants_usage_chunk)
        events = self.pipeline.write_stream(exchange, first, batches, writer)
        return EventStreamResponse(events, headers=STREAM_HEADERS)
