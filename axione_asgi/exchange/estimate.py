"""Quick, upper-leaning guesses of prompt tokens, before an upstream reports the real count."""

from __future__ import annotations

import json
import math
from typing import Any

from axione_asgi.openai_types import ChatCompletionRequest, ImagePart

__all__ = [
    "DEFAULT_OUTPUT_RESERVE",
    "IMAGE_TOKEN_ESTIMATE",
    "estimate_json_tokens",
    "estimate_prompt_tokens",
]

# Reserved for the answer when a client sets no output cap.
DEFAULT_OUTPUT_RESERVE = 1024
# What an image costs in the estimate, before the upstream reports the real count.
IMAGE_TOKEN_ESTIMATE = 765
# Binary payloads (base64 images, PDFs) are priced as images, not as text.
_BINARY_KEYS = frozenset({"data", "file_data"})


def estimate_prompt_tokens(request: ChatCompletionRequest) -> int:
    """Prompt tokens of a chat request: 4 characters a token, images at a fixed price."""
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


def estimate_json_tokens(*values: Any) -> int:
    """Prompt tokens of a body in another dialect's JSON: every string counts, 4 characters
    a token, except binary payloads, priced as images. Walks the parsed JSON once."""
    chars = 0
    binaries = 0
    stack: list[Any] = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key in _BINARY_KEYS and isinstance(item, str) and len(item) > 256:
                    binaries += 1
                else:
                    stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
    return math.ceil(chars / 4) + binaries * IMAGE_TOKEN_ESTIMATE
