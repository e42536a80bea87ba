"""The legacy OpenAI text completions dialect, `POST /completions`, served through the chat path.

Older tools still call it (LlamaIndex's `complete()` on `OpenAILike`,
LangChain's `OpenAI` LLM, scripts written for `gpt-3.5-turbo-instruct`).
Each prompt goes to the model as one user message, through the same
pipeline as chat: keys, quota, `x-ratelimit-*` headers, ledger, fallbacks
and cache alike. The answer is OpenAI's `text_completion`: `text` choices,
`logprobs` null, streamed as `text_completion` chunks, then `[DONE]`.

What only a completion model can do is left out, never an error: `suffix`,
`best_of`, `logprobs` (always null). `echo` puts the prompt before the text.
No `max_tokens` means no cap, as on chat (OpenAI's legacy default of 16
tokens would cut a chat model's every answer). Prompts are text: token
arrays are a 400, and several prompts in one request are answered one by
one (not streamed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from axione_asgi.cache import CACHE_HEADER
from axione_asgi.config import AxioneConfig
from axione_asgi.errors import AxioneError, ErrorEnvelope, InvalidRequest
from axione_asgi.exchange.estimate import estimate_prompt_tokens
from axione_asgi.exchange.parsing import parse_body, read_body, validation_error
from axione_asgi.exchange.pipeline import Batch, Exchange, Pipeline
from axione_asgi.ingress.base import JSON, json_answer, route
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionRequest,
    StreamOptions,
    Usage,
    new_id,
    now,
)
from axione_asgi.providers.base import ModelRoute
from axione_asgi.sse import DONE, encode_data
from axione_asgi.streaming import EventStreamResponse

__all__ = ["CompletionRequest", "CompletionStreamWriter", "OpenAICompletionsIngress"]

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# The request's fields that mean the same on chat, sent on as they are.
_CHAT_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "stream",
    "stream_options",
    "models",
)


class CompletionRequest(BaseModel):
    """An OpenAI legacy completion request (`POST /completions`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = None
    echo: bool | None = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    seed: int | None = None
    # OpenRouter's convention, as on chat: models to try in order.
    models: list[str] | None = Field(default=None, max_length=16)

    def prompts(self) -> list[str]:
        """The prompts as text, or a 400 for token arrays and an empty list."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise InvalidRequest("'prompt' must not be empty", param="prompt")
        if not all(isinstance(p, str) for p in prompt):
            raise InvalidRequest(
                "Token arrays are not supported as 'prompt': send the prompt as text",
                param="prompt",
            )
        return [p for p in prompt if isinstance(p, str)]

    def chat(self, prompt: str) -> ChatCompletionRequest:
        """The chat request that answers `prompt`."""
        sent = self.model_dump(exclude_unset=True)
        # Unknown fields go on, for OpenAI-format upstreams (SPEC 1); legacy-only
        # ones (`suffix`, `echo`, `best_of`, `logprobs`) do not.
        fields: dict[str, Any] = dict(self.model_extra or {})
        fields.update({k: sent[k] for k in _CHAT_FIELDS if k in sent})
        fields["model"] = self.model
        fields["messages"] = [{"role": "user", "content": prompt}]
        try:
            return ChatCompletionRequest.model_validate(fields)
        except ValidationError as exc:
            raise validation_error(exc) from None


def _usage(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def text_completion(
    answers: list[ChatCompletion], prompts: list[str], model: str, *, echo: bool
) -> dict[str, Any]:
    """One `text_completion` for the chat answers of `prompts`, in order."""
    choices: list[dict[str, Any]] = []
    usage = Usage()
    for prompt, answer in zip(prompts, answers, strict=True):
        for choice in answer.choices:
            text = choice.message.content or ""
            choices.append(
                {
                    "text": prompt + text if echo else text,
                    "index": len(choices),
                    "logprobs": None,
                    "finish_reason": choice.finish_reason,
                }
            )
        if answer.usage is not None:
            usage.prompt_tokens += answer.usage.prompt_tokens
            usage.completion_tokens += answer.usage.completion_tokens
            usage.total_tokens += answer.usage.total_tokens
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": answers[0].created if answers else now(),
        "model": model,
        "choices": choices,
        "usage": _usage(usage),
    }


class CompletionStreamWriter:
    """`text_completion` chunks, a usage chunk when asked, then `[DONE]`."""

    __slots__ = ("created", "echo", "echoed", "id", "model", "usage", "wants_usage")

    def __init__(self, model: str, wants_usage: bool, echo: str | None = None) -> None:
        self.id = new_id("cmpl")
        self.created = now()
        self.model = model
        self.wants_usage = wants_usage
        self.echo = echo
        self.echoed: set[int] = set()
        self.usage: Usage | None = None

    def _event(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = _usage(usage)
        return encode_data(json.dumps(body, ensure_ascii=False).encode())

    def feed(self, batch: Batch) -> bytes:
        out: list[bytes] = []
        for chunk in batch:
            if chunk.usage is not None:
                self.usage = chunk.usage
            for choice in chunk.choices:
                text = choice.delta.content or ""
                if self.echo is not None and choice.index not in self.echoed:
                    self.echoed.add(choice.index)
                    text = self.echo + text
                if not text and choice.finish_reason is None:
                    continue  # the role-only first chunk: nothing to show
                piece = {
                    "text": text,
                    "index": choice.index,
                    "logprobs": None,
                    "finish_reason": choice.finish_reason,
                }
                out.append(self._event([piece]))
        return b"".join(out)

    def finish(self) -> bytes:
        if not self.wants_usage or self.usage is None:
            return DONE
        return self._event([], self.usage) + DONE

    def error(self, exc: AxioneError) -> bytes:
        return encode_data(exc.body())


class OpenAICompletionsIngress:
    """`POST /completions` over the shared pipeline."""

    def __init__(self, pipeline: Pipeline, config: AxioneConfig) -> None:
        self.pipeline = pipeline
        self.config = config

    def routes(self) -> list[BaseRoute]:
        return [route("/completions", self.completions, "POST")]

    def error_envelopes(self) -> Mapping[str, ErrorEnvelope]:
        return {}  # OpenAI's envelope, the default

    async def completions(self, request: Request) -> Response:
        limits = self.config.request
        body = await read_body(request, self.config.max_body_bytes, limits.body_timeout_s)
        legacy = parse_body(CompletionRequest, body)
        prompts = legacy.prompts()
        chats = [legacy.chat(prompt) for prompt in prompts]
        chat = chats[0]
        if chat.stream and len(chats) > 1:
            raise InvalidRequest("A streamed completion takes one prompt", param="prompt")
        pipeline = self.pipeline
        exchange = pipeline.open(
            request.scope,
            request.receive,
            [chat.model, *(chat.models or ())],
            lambda kind: sum(estimate_prompt_tokens(c, kind) for c in chats),
        )
        echo = bool(legacy.echo)
        if len(chats) > 1:
            await self._admit(exchange, chats)
            return await self._several(exchange, chats, prompts, echo)
        variant = "text_completion+echo" if echo else "text_completion"
        cache_key = pipeline.cache_key(exchange, chat, request.headers, variant)
        cached = await pipeline.cached(exchange, cache_key)
        if cached is not None:
            return Response(cached, media_type=JSON, headers={CACHE_HEADER: "hit"})
        await self._admit(exchange, chats)
        if chat.stream:
            first, batches = await pipeline.open_stream(exchange, chat)
            writer = CompletionStreamWriter(
                exchange.model_name(chat.model),
                chat.wants_usage_chunk,
                prompts[0] if echo else None,
            )
            events = pipeline.write_stream(exchange, first, batches, writer)
            return EventStreamResponse(events, headers=STREAM_HEADERS)
        completion = await pipeline.chat(exchange, chat)
        if completion is None:
            return Response(status_code=499)
        answer = text_completion([completion], prompts, exchange.model_name(chat.model), echo=echo)
        out = json.dumps(answer, ensure_ascii=False).encode()
        return await json_answer(pipeline, out, cache_key)

    @staticmethod
    async def _admit(exchange: Exchange, chats: list[ChatCompletionRequest]) -> None:
        """One admission for every prompt's answers; a day nearly spent lowers their cap."""
        chat = chats[0]
        cap = await exchange.admit(chat.output_cap, (chat.n or 1) * len(chats))
        if cap is not None:
            for each in chats:
                if each.max_completion_tokens is not None:
                    each.max_completion_tokens = cap
                else:
                    each.max_tokens = cap

    async def _several(
        self,
        exchange: Exchange,
        chats: list[ChatCompletionRequest],
        prompts: list[str],
        echo: bool,
    ) -> Response:
        async def ask(r: ModelRoute) -> list[ChatCompletion]:
            # One model answers them all, so a fallback takes the whole request.
            return [await r.provider.chat(c, r.model) for c in chats]

        answers = await self.pipeline.complete(exchange, ask)
        if answers is None:
            return Response(status_code=499)
        usages = [a.usage for a in answers]
        total = None
        if all(u is not None and (u.prompt_tokens or u.completion_tokens) for u in usages):
            prompt = sum(u.prompt_tokens for u in usages if u is not None)
            completion = sum(u.completion_tokens for u in usages if u is not None)
            total = Usage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            )
        chars_out = sum(len(c.message.content or "") for a in answers for c in a.choices)
        exchange.report_usage(total, chars_out)
        answer = text_completion(answers, prompts, exchange.model_name(chats[0].model), echo=echo)
        return Response(json.dumps(answer, ensure_ascii=False).encode(), media_type=JSON)
