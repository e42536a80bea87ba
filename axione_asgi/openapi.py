"""The OpenAPI document of the API as built, generated from the pydantic models."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from pydantic import BaseModel

from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
)

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message", "code"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "code": {"type": "string"},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}

_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}

_COUNTS = {
    "type": "object",
    "properties": {"requests": {"type": "integer"}, "tokens": {"type": "integer"}},
}

_USAGE_REPORT = {
    "type": "object",
    "required": ["object", "key_id", "tier", "day", "limits", "used", "remaining", "resets_at"],
    "properties": {
        "object": {"const": "usage"},
        "key_id": {"type": "string"},
        "tier": {"type": "integer"},
        "day": {"type": "string", "format": "date"},
        "limits": {
            "type": "object",
            "properties": {
                "requests_per_day": {"type": "integer"},
                "tokens_per_day": {"type": "integer"},
            },
        },
        "used": _COUNTS,
        "remaining": _COUNTS,
        "resets_at": {"type": "string"},
    },
}


_USAGE_HISTORY = {
    "type": "object",
    "required": ["object", "key_id", "days", "data"],
    "properties": {
        "object": {"const": "list"},
        "key_id": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 90},
        "data": {
            "type": "array",
            "description": "One entry per UTC day, oldest first, ending today (zeros included).",
            "items": {
                "type": "object",
                "required": [
                    "day",
                    "requests",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                ],
                "properties": {
                    "day": {"type": "string", "format": "date"},
                    "requests": {"type": "integer"},
                    "prompt_tokens": {"type": "integer"},
                    "completion_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                },
            },
        },
    },
}

# -- the Anthropic Messages dialect (SPEC 9) ----------------------------------
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}

_ANTHROPIC_ERROR = {
    "type": "object",
    "description": "Anthropic's error envelope, so the anthropic SDKs raise their own classes.",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"enum": sorted(set(_ANTHROPIC_ERROR_TYPES.values()))},
                "message": {"type": "string"},
            },
        },
    },
}

_MESSAGES_FIELDS: dict[str, Any] = {
    "model": {
        "type": "string",
        "minLength": 1,
        "description": "`provider/model`, or an alias from `[aliases]`.",
    },
    "messages": {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"enum": ["user", "assistant"]},
                "content": {"type": ["string", "array"], "items": {"type": "object"}},
            },
        },
    },
    "system": {"type": ["string", "array"], "items": {"type": "object"}},
    "tools": {"type": "array", "items": {"type": "object"}},
    "tool_choice": {"type": "object"},
    "thinking": {"type": "object"},
}

_MESSAGES_REQUEST = {
    "type": "object",
    "description": "Anthropic's Messages request. Fields not listed are accepted: forwarded "
    "on pass-through to an Anthropic backend, translated or ignored elsewhere.",
    "required": ["model", "messages", "max_tokens"],
    "additionalProperties": True,
    "properties": {
        **_MESSAGES_FIELDS,
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        "stream": {"type": "boolean"},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "metadata": {"type": "object"},
    },
}

_COUNT_TOKENS_REQUEST = {
    "type": "object",
    "description": "A Messages request without `max_tokens`, to count its input tokens.",
    "required": ["model", "messages"],
    "additionalProperties": True,
    "properties": _MESSAGES_FIELDS,
}

_MESSAGE = {
    "type": "object",
    "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": {"type": "string", "description": "The name the client sent."},
        "content": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "description": "`text`, `tool_use`, `thinking`, and on pass-through every "
                "block type Anthropic answers with.",
                "properties": {"type": {"type": "string"}},
            },
        },
        "stop_reason": {"type": ["string", "null"]},
        "stop_sequence": {"type": ["string", "null"]},
        "usage": {
            "type": "object",
            "required": ["input_tokens", "output_tokens"],
            "properties": {
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "cache_creation_input_tokens": {"type": ["integer", "null"]},
                "cache_read_input_tokens": {"type": ["integer", "null"]},
            },
        },
    },
}

# The Responses dialect: bodies described by their required fields; the
# rest is OpenAI's Responses API, passed through or translated.
_RESPONSES_REQUEST = {
    "type": "object",
    "required": ["model"],
    "additionalProperties": True,
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "input": {"type": ["string", "array"]},
        "instructions": {"type": ["string", "null"]},
        "previous_response_id": {"type": ["string", "null"]},
        "stream": {"type": ["boolean", "null"]},
        "store": {"type": ["boolean", "null"]},
        "max_output_tokens": {"type": ["integer", "null"], "minimum": 1},
    },
}
_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "model", "output"],
    "additionalProperties": True,
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "created_at": {"type": "number"},
        "status": {"type": "string"},
        "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": ["object", "null"]},
    },
}
_RESPONSE_DELETED = {
    "type": "object",
    "required": ["id", "object", "deleted"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response.deleted"},
        "deleted": {"type": "boolean"},
    },
}
_ITEM_LIST = {
    "type": "object",
    "required": ["object", "data", "has_more"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object"}},
        "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]},
        "has_more": {"type": "boolean"},
    },
}
_COMPLETION_REQUEST = {
    "type": "object",
    "required": ["model", "prompt"],
    "additionalProperties": True,
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "prompt": {"type": ["string", "array"]},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1},
        "stream": {"type": ["boolean", "null"]},
    },
}
_TEXT_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "additionalProperties": True,
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
    },
}

_TOKEN_COUNT = {
    "type": "object",
    "required": ["input_tokens"],
    "properties": {"input_tokens": {"type": "integer"}},
}

_MESSAGES_HEADERS = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }
    for name, description in (
        ("anthropic-version", "Forwarded to an Anthropic backend on pass-through."),
        (
            "anthropic-beta",
            "Forwarded to an Anthropic backend on pass-through (filtered by the "
            "provider's `allowed_betas` when set).",
        ),
        (
            "X-Claude-Code-Session-Id",
            "Claude Code's session id, kept in the usage ledger's `session_id`.",
        ),
    )
]

_DESCRIPTION = (
    "An OpenAI-compatible AI gateway. Model ids are `provider/model`.\n\n"
    "It also speaks Anthropic's Messages API (`POST /messages`, "
    "`POST /messages/count_tokens`) to every backend, with errors in Anthropic's "
    "envelope: the anthropic SDKs take the prefix without its last `/v1` as their "
    "`base_url`. And OpenAI's Responses API (`/responses`, with stored responses "
    "per key) for Codex CLI and the Agents SDK. Credentials: `Authorization: Bearer "
    "<key>` or `x-api-key: <key>`.\n\n"
    "Opt-in routes not described here, when enabled in the configuration: the admin "
    "API for the operator key (`[admin]`, under `/admin` by default) and the "
    "Prometheus scrape endpoint (`[metrics]`, `/metrics` by default)."
)


def _errors(*statuses: int) -> dict[str, Any]:
    ref = {"$ref": _REF.format(model="Error")}
    return {
        str(s): {"description": "An error", "content": {"application/json": {"schema": ref}}}
        for s in statuses
    }


def _anthropic_errors(*statuses: int) -> dict[str, Any]:
    ref = {"$ref": _REF.format(model="AnthropicError")}
    return {
        str(s): {
            "description": f"An error: `{_ANTHROPIC_ERROR_TYPES[s]}`",
            "content": {"application/json": {"schema": ref}},
        }
        for s in statuses
    }


def _body(ref: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=ref)}}},
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=ref)}}},
    }


_LIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"status": {"const": "ok"}},
    "required": ["status"],
}
_READY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"enum": ["ready", "not_ready", "draining"]},
        "checks": {
            "type": "object",
            "description": "Per store: `ok`, `timeout`, or the type of the error it raised",
            "additionalProperties": {"type": "string"},
        },
    },
    "required": ["status"],
}


def _probe(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for the routes at the app's root (a host adds its mount path)."""
    common = _errors(401, 429, 500)
    schemas = _schemas(
        ChatCompletionRequest,
        ChatCompletion,
        ChatCompletionChunk,
        EmbeddingRequest,
        EmbeddingResponse,
    )
    schemas.update(
        Error=_ERROR, Model=_MODEL, UsageReport=_USAGE_REPORT, UsageHistory=_USAGE_HISTORY
    )
    schemas.update(
        AnthropicError=_ANTHROPIC_ERROR,
        MessagesRequest=_MESSAGES_REQUEST,
        CountTokensRequest=_COUNT_TOKENS_REQUEST,
        Message=_MESSAGE,
        MessageTokensCount=_TOKEN_COUNT,
        ResponsesRequest=_RESPONSES_REQUEST,
        Response=_RESPONSE,
        ResponseDeleted=_RESPONSE_DELETED,
        ResponseItemList=_ITEM_LIST,
        CompletionRequest=_COMPLETION_REQUEST,
        TextCompletion=_TEXT_COMPLETION,
    )
    response_id = [
        {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    schemas["ModelList"] = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": _REF.format(model="Model")}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Axione",
            "version": version("axione-asgi"),
            "description": _DESCRIPTION,
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        # Either one: the same key as a bearer token or in `x-api-key`.
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            "/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _REF.format(model="ChatCompletionRequest")}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "A completion, or a stream of chunks when `stream`",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="ChatCompletion")}
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(400, 403, 404, 408, 413, 502, 503, 504),
                        **common,
                    },
                }
            },
            "/embeddings": {
                "post": {
                    "operationId": "createEmbedding",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _REF.format(model="EmbeddingRequest")}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("EmbeddingResponse", "The embeddings"),
                        **_errors(400, 403, 404, 408, 413, 502, 503, 504),
                        **common,
                    },
                }
            },
            "/messages": {
                "post": {
                    "operationId": "createMessage",
                    "description": "Anthropic's Messages API. To an `anthropic`-kind backend "
                    "the body is passed through as sent; to the others it is translated. "
                    "Tools the backend cannot run are left out and named in the "
                    "`x-axione-ignored-tools` response header.",
                    "parameters": _MESSAGES_HEADERS,
                    "requestBody": _body("MessagesRequest"),
                    "responses": {
                        "200": {
                            "description": "A Message, or Anthropic's stream of events "
                            "when `stream`",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="Message")}
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_anthropic_errors(
                            400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504, 529
                        ),
                    },
                }
            },
            "/messages/count_tokens": {
                "post": {
                    "operationId": "countMessageTokens",
                    "description": "The input tokens of a Messages request: Anthropic's own "
                    "count, Gemini's `countTokens`, else the gateway's estimate. Not counted "
                    "against the key's day.",
                    "parameters": _MESSAGES_HEADERS,
                    "requestBody": _body("CountTokensRequest"),
                    "responses": {
                        "200": _json("MessageTokensCount", "The input token count"),
                        **_anthropic_errors(400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504),
                    },
                }
            },
            "/responses": {
                "post": {
                    "operationId": "createResponse",
                    "description": "OpenAI's Responses API. To an `openai`-kind backend with "
                    '`responses = "native"` the body is passed through as sent; to the '
                    "others it is translated. With `store` (the default) the response is kept "
                    "for `previous_response_id` and `GET`, per key.",
                    "requestBody": _body("ResponsesRequest"),
                    "responses": {
                        "200": {
                            "description": "A response, or its stream of events when `stream`",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="Response")}
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(400, 403, 404, 408, 413, 502, 503, 504),
                        **common,
                    },
                }
            },
            "/responses/{response_id}": {
                "get": {
                    "operationId": "retrieveResponse",
                    "parameters": response_id,
                    "responses": {
                        "200": _json("Response", "The stored response"),
                        **_errors(404),
                        **common,
                    },
                },
                "delete": {
                    "operationId": "deleteResponse",
                    "parameters": response_id,
                    "responses": {
                        "200": _json("ResponseDeleted", "The response is forgotten"),
                        **_errors(404),
                        **common,
                    },
                },
            },
            "/responses/{response_id}/input_items": {
                "get": {
                    "operationId": "listResponseInputItems",
                    "parameters": [
                        *response_id,
                        *(
                            {"name": n, "in": "query", "required": False, "schema": schema}
                            for n, schema in (
                                ("order", {"type": "string", "enum": ["asc", "desc"]}),
                                ("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                                ("after", {"type": "string"}),
                            )
                        ),
                    ],
                    "responses": {
                        "200": _json("ResponseItemList", "The input items it answered"),
                        **_errors(400, 404),
                        **common,
                    },
                }
            },
            "/completions": {
                "post": {
                    "operationId": "createCompletion",
                    "description": "The legacy text completions API, served through the chat "
                    "path: each prompt is one user message.",
                    "requestBody": _body("CompletionRequest"),
                    "responses": {
                        "200": {
                            "description": "A text completion, or a stream of them",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="TextCompletion")}
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(400, 403, 404, 408, 413, 502, 503, 504),
                        **common,
                    },
                }
            },
            "/models": {
                "get": {
                    "operationId": "listModels",
                    "responses": {"200": _json("ModelList", "Every model"), **common},
                }
            },
            "/models/{provider}/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "parameters": [
                        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                        for n in ("provider", "model")
                    ],
                    "responses": {"200": _json("Model", "One model"), **_errors(404), **common},
                }
            },
            "/usage": {
                "get": {
                    "operationId": "getUsage",
                    "responses": {"200": _json("UsageReport", "The key's day"), **common},
                }
            },
            "/usage/history": {
                "get": {
                    "operationId": "getUsageHistory",
                    "description": "The calling key's requests and tokens per UTC day, "
                    "from the usage ledger. Not counted against the key's day.",
                    "parameters": [
                        {
                            "name": "days",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 90,
                                "default": 30,
                            },
                        }
                    ],
                    "responses": {
                        "200": _json("UsageHistory", "The key's last days"),
                        **_errors(400),
                        **common,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "getHealthz",
                    "description": "Liveness: 200 while the process answers, draining or "
                    "not. Served without a key; not counted.",
                    "security": [],
                    "responses": {"200": _probe("Alive", _LIVE_SCHEMA)},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "getReadyz",
                    "description": "Readiness: 200 when the key store, the usage ledger, "
                    "the counters and the response store each answer a cheap read within "
                    "1 s; 503 naming those that did not, or `draining` once the server "
                    "has begun to shut down. Served without a key; not counted.",
                    "security": [],
                    "responses": {
                        "200": _probe("Ready", _READY_SCHEMA),
                        "503": _probe("Not ready, or draining", _READY_SCHEMA),
                    },
                }
            },
            "/dashboard": {
                "get": {
                    "operationId": "getDashboard",
                    "description": "The usage page (served without a key; it asks for one "
                    "in the browser). Absent when `[dashboard] enabled = false`.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        **_errors(500),
                    },
                }
            },
        },
    }
