"""A strict fake of Mistral's embeddings API (`POST /v1/embeddings`).

Mistral validates bodies with pydantic and forbids extra fields: OpenAI's
`dimensions` or `user` sent as they are get a 422 whose `message.detail` lists
each offending field (`extra_forbidden`), as do token arrays in `input`. It
takes `input` as a string or a list of non-empty strings, `output_dimension`
only for `codestral-embed` (`mistral-embed` is 1024 floats, always),
`output_dtype` `float` and `encoding_format` `float` (what the gateway asks
for). Usage counts words and punctuation, `completion_tokens` 0, as Mistral
reports it. Chat is `FakeOpenAI(flavor="mistral")`, as strict: message fields
beyond Mistral's schema are a 422 of the same shape, tool-call ids that are
not 9 alphanumerics a 400.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.openai_fake import count_tokens, unit_vector

__all__ = ["FAKE_MISTRAL_KEY", "MISTRAL_EMBEDDING_MODELS", "FakeMistral"]

FAKE_MISTRAL_KEY = "mistral-fake-key-0123456789abcdef"

Json = dict[str, Any]

_FIELDS = frozenset(
    {"model", "input", "output_dimension", "output_dtype", "encoding_format", "metadata"}
)
# Model: (default size, the largest `output_dimension`, or None if it takes none).
MISTRAL_EMBEDDING_MODELS: dict[str, tuple[int, int | None]] = {
    "mistral-embed": (1024, None),
    "codestral-embed": (1536, 3072),
}


def _detail(kind: str, loc: list[Any], msg: str) -> Json:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": None}


class FakeMistral:
    """The fake upstream; an ASGI app. Every body received is kept in `requests`."""

    def __init__(self, *, api_key: str = FAKE_MISTRAL_KEY) -> None:
        self.api_key = api_key
        self.requests: list[Any] = []
        self.fail_status: int | None = None
        self.app = Starlette(routes=[Route("/v1/embeddings", self._embeddings, methods=["POST"])])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def last_body(self) -> Any:
        return self.requests[-1]

    @staticmethod
    def _error(status: int, message: Any, etype: str = "invalid_request_error") -> JSONResponse:
        body = {"object": "error", "message": message, "type": etype, "param": None, "code": None}
        return JSONResponse(body, status_code=status)

    async def _embeddings(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        self.requests.append(body)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"message": "Unauthorized", "request_id": "fake"}, 401)
        if self.fail_status is not None:
            return self._error(self.fail_status, "Service tier capacity exceeded", "server_error")
        if not isinstance(body, dict):
            return self._error(400, "Invalid JSON body")
        details = self._check(body)
        if details:
            return self._error(422, {"detail": details})
        model = body["model"]
        if model not in MISTRAL_EMBEDDING_MODELS:
            return self._error(400, f"Invalid model: {model}", "invalid_model")
        default, largest = MISTRAL_EMBEDDING_MODELS[model]
        size = body.get("output_dimension")
        if size is not None:
            if largest is None:
                return self._error(400, f"Model {model} does not support output_dimension")
            if not 1 <= size <= largest:
                return self._error(400, f"output_dimension must be between 1 and {largest}")
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        tokens = sum(count_tokens(t) for t in texts)
        return JSONResponse(
            {
                "id": "embd-fake0001",
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "embedding": unit_vector(t, size or default),
                        "index": i,
                    }
                    for i, t in enumerate(texts)
                ],
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            }
        )

    @staticmethod
    def _check(body: Json) -> list[Json]:
        """Pydantic-style validation details, as Mistral's 422 lists them."""
        details = [
            _detail("extra_forbidden", [k], "Extra inputs are not permitted")
            for k in body
            if k not in _FIELDS
        ]
        if not isinstance(body.get("model"), str):
            details.append(_detail("missing", ["model"], "Field required"))
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            details.append(_detail("string_type", ["input"], "Input should be a valid string"))
        else:
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    details.append(
                        _detail("string_type", ["input", i], "Input should be a valid string")
                    )
                elif not text:
                    details.append(
                        _detail(
                            "string_too_short",
                            ["input", i],
                            "String should have at least 1 character",
                        )
                    )
        size = body.get("output_dimension")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            details.append(_detail("int_type", ["output_dimension"], "Input should be an integer"))
        for name in ("output_dtype", "encoding_format"):
            if body.get(name, "float") != "float":
                details.append(_detail("literal_error", [name], "Input should be 'float'"))
        return details
