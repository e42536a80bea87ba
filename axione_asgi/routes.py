"""The HTTP routes: /chat/completions, /models, /usage. Joins providers to HTTP."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from axione_asgi.errors import (
    AxioneError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    RequestTooLarge,
)
from axione_asgi.openai_types import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ImagePart,
    Usage,
    now,
)
from axione_asgi.providers.base import ModelRoute, ProviderRegistry
from axione_asgi.quota import QuotaService
from axione_asgi.scope import QuotaHandle, key_of, quota_of, request_id_of
from axione_asgi.sse import DONE, encode_data

__all__ = ["GatewayRoutes", "estimate_prompt_tokens", "parse_chat_request"]

logger = logging.getLogger("axione")

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


def _param(loc: tuple[int | str, ...]) -> str | None:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            not part.startswith(
                ("function-", "str", "list[", "literal[", "tagged-union", "is-instance")
            )
            and part not in ("text", "image_url", "other")
        ) or not out:
            out += ("." if out else "") + part
    return out or None


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate a chat request body, or raise a SPEC 400."""
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] in ("json_invalid", "json_type"):
            raise InvalidRequest(
                "The request body is not valid JSON", code="invalid_json"
            ) from None
        if first["type"] == "model_type" and not first["loc"]:
            raise InvalidRequest(
                "The request body must be a JSON object", code="invalid_json"
            ) from None
        param = _param(tuple(first["loc"]))
        code = "missing_field" if first["type"] == "missing" else "invalid_value"
        where = f"'{param}'" if param else "The request"
        raise InvalidRequest(f"{where}: {first['msg']}", code=code, param=param) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing it as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"The request body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"The request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class GatewayRoutes:
    """The gateway's endpoints over one provider registry and quota service."""

    def __init__(
        self, registry: ProviderRegistry, quota: QuotaService, *, max_body_bytes: int
    ) -> None:
        self.registry = registry
        self.quota = quota
        self.max_body_bytes = max_body_bytes
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
            Route("/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/models", self.list_models, methods=["GET"]),
            Route("/models/{model_id:path}", self.get_model, methods=["GET"]),
            Route("/usage", self.usage, methods=["GET"]),
        ]

    # -- /models -------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        return Response(self._models_body, media_type=JSON)

    async def get_model(self, request: Request) -> Response:
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
        report = await self.quota.usage(key)
        return Response(json.dumps(report).encode(), media_type=JSON)

    # -- /chat/completions ---------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        body = await read_body(request, self.max_body_bytes)
        chat = parse_chat_request(body)
        route = self.registry.resolve(chat.model)
        key = key_of(request.scope)
        if key is not None and not key.may_use(route.public_id):
            raise ModelNotAllowed(route.public_id)
        prompt_estimate = estimate_prompt_tokens(chat)
        quota = quota_of(request.scope)
        if quota is not None:
            await quota.admit(
                reserve_tokens=prompt_estimate + (chat.output_cap or DEFAULT_OUTPUT_RESERVE),
                model=route.public_id,
                provider=route.provider_name,
            )
        if chat.stream:
            return await self._stream(chat, route, quota, prompt_estimate, request)
        completion = await route.provider.chat(chat, route.model)
        completion.model = route.public_id
        if quota is not None:
            _report(
                quota,
                completion.usage,
                prompt_estimate,
                (
                    completion.choices
                    and sum(len(c.message.content or "") for c in completion.choices)
                )
                or 0,
            )
        return Response(completion.model_dump_json(exclude_none=True), media_type=JSON)

    async def _stream(
        self,
        chat: ChatCompletionRequest,
        route: ModelRoute,
        quota: QuotaHandle | None,
        prompt_estimate: int,
        request: Request,
    ) -> Response:
        chunks = aiter(route.provider.stream(chat, route.model))
        # The first chunk is awaited here, so an upstream that fails before its
        # first byte still gets a proper HTTP error status.
        first = await anext(chunks, None)
        events = _events(
            first, chunks, chat, route, quota, prompt_estimate, request_id_of(request.scope)
        )
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )


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
    first: ChatCompletionChunk | None,
    chunks: AsyncIterator[ChatCompletionChunk],
    chat: ChatCompletionRequest,
    route: ModelRoute,
    quota: QuotaHandle | None,
    prompt_estimate: int,
    request_id: str | None,
) -> AsyncIterator[bytes]:
    """SSE bytes for each chunk as it arrives; usage settles even on a cut."""
    wants_usage = chat.wants_usage_chunk
    public_id = route.public_id
    usage: Usage | None = None
    chars_out = 0
    chunk = first
    try:
        while chunk is not None:
            chunk.model = public_id
            if chunk.usage is not None:
                usage = chunk.usage
                if not wants_usage:
                    chunk.usage = None
                    if not chunk.choices:
                        chunk = await anext(chunks, None)
                        continue
            for choice in chunk.choices:
                if choice.delta.content:
                    chars_out += len(choice.delta.content)
            yield encode_data(chunk.model_dump_json(exclude_none=True).encode())
            chunk = await anext(chunks, None)
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
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
