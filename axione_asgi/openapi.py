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

_DESCRIPTION = (
    "An OpenAI-compatible AI gateway. Model ids are `provider/model`.\n\n"
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


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=ref)}}},
    }


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
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
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
