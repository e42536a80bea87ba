"""Quick, upper-leaning guesses of prompt tokens, before an upstream reports the real count.

The daily token limit reserves the estimate before a request goes out
(SPEC 3), so it leans up where tokenizers do: ASCII text at 4 characters a
token, every other character a token of its own (CJK, most scripts and
emoji take one or more), and images by their size, as the provider the
request goes to prices them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from typing import Any

from axione_asgi.openai_types import ChatCompletionRequest, ImagePart

__all__ = [
    "DEFAULT_OUTPUT_RESERVE",
    "IMAGE_TOKEN_ESTIMATE",
    "MINIMAL_ANSWER_TOKENS",
    "estimate_json_tokens",
    "estimate_prompt_tokens",
    "image_tokens",
    "text_tokens",
]

# Reserved for (and, so the day holds, the cap sent with) an answer whose client set no cap.
DEFAULT_OUTPUT_RESERVE = 4096
# The least room a request must find left of the day to be admitted: a short answer.
MINIMAL_ANSWER_TOKENS = 16
# An image whose size cannot be read (a URL): priced as the largest each provider takes.
IMAGE_TOKEN_ESTIMATE = 1600
# Binary payloads (base64 images, PDFs) are priced as images, not as text.
_BINARY_KEYS = frozenset({"data", "file_data"})
_DATA_URL = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)


def text_tokens(text: str) -> int:
    """Tokens of a text: ASCII at 4 characters a token, any other character one token."""
    if text.isascii():
        return math.ceil(len(text) / 4)
    # One pass in C: each non-ASCII character takes 2 to 4 UTF-8 bytes, so the
    # extra bytes over the length count them (leaning up for 2-byte scripts).
    extra = len(text.encode("utf-8", "surrogatepass")) - len(text)
    others = min(len(text), extra)
    return math.ceil((len(text) - others) / 4) + others


def _dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, JPEG or WebP header, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return w, h
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        if data[12:16] == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return w, h
        if data[12:16] == b"VP8 " and len(data) >= 30:
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if data[12:16] == b"VP8L" and len(data) >= 25:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if data.startswith(b"\xff\xd8"):
        at = 2
        while at + 9 < len(data):
            if data[at] != 0xFF:
                return None
            marker = data[at + 1]
            size = int.from_bytes(data[at + 2 : at + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[at + 5 : at + 9])
                return w, h
            at += 2 + size
    return None


def _header_of(url: str) -> bytes | None:
    """The first bytes of a base64 data URL's payload (enough for any image header)."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    head = url[match.end() : match.end() + 65536]
    head = head[: len(head) - len(head) % 4]
    try:
        return base64.b64decode(head)
    except (binascii.Error, ValueError):
        return None


def image_tokens(url: str, kind: str = "openai", detail: str | None = None) -> int:
    """What an image costs on the provider `kind`, by its size where it can be read."""
    header = _header_of(url)
    size = _dimensions(header) if header is not None else None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return IMAGE_TOKEN_ESTIMATE
    w, h = size
    if kind == "anthropic":
        # Scaled to 1568 px on the long edge and 1.15 megapixels, then w*h/750.
        scale = min(1.0, 1568 / max(w, h), math.sqrt(1_150_000 / (w * h)))
        return math.ceil(w * scale * h * scale / 750)
    if kind == "gemini":
        # Up to 384 px both ways one tile of 258 tokens, else 768 px tiles.
        if w <= 384 and h <= 384:
            return 258
        return 258 * math.ceil(w / 768) * math.ceil(h / 768)
    if detail == "low":
        return 85
    # OpenAI: fit 2048 px, shortest side to 768 px, then 170 per 512 px tile and 85.
    fit = min(1.0, 2048 / max(w, h))
    short = min(1.0, 768 / (min(w, h) * fit))
    width, height = w * fit * short, h * fit * short
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def estimate_prompt_tokens(request: ChatCompletionRequest, kind: str = "openai") -> int:
    """Prompt tokens of a chat request, on a provider of `kind`."""
    tokens = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            tokens += text_tokens(content)
        elif content:
            for part in content:
                if isinstance(part, ImagePart):
                    tokens += image_tokens(part.image_url.url, kind, part.image_url.detail)
                else:
                    tokens += text_tokens(getattr(part, "text", "") or "")
        for call in message.tool_calls or ():
            tokens += text_tokens(call.function.name) + text_tokens(call.function.arguments)
    for tool in request.tools or ():
        schema = json.dumps(tool.function.parameters or {}, ensure_ascii=False)
        tokens += text_tokens(tool.function.name) + text_tokens(schema)
    return tokens + 4 * len(request.messages)


def estimate_json_tokens(*values: Any) -> int:
    """Prompt tokens of a body in another dialect's JSON: every string counts as text,
    binary payloads as images. Walks the parsed JSON once."""
    tokens = 0
    binaries = 0
    stack: list[Any] = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            tokens += text_tokens(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key in _BINARY_KEYS and isinstance(item, str) and len(item) > 256:
                    binaries += 1
                else:
                    stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
    return tokens + binaries * IMAGE_TOKEN_ESTIMATE
