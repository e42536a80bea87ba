"""MkDocs hook: the configuration reference, generated from the pydantic models at build time.

Pages hold placeholders that this hook replaces while the site builds:

- `<!-- config-reference -->`: one table per TOML table of `AxioneConfig`
  (key, type, default, description), walked recursively from `model_fields`;
- `<!-- tier-table -->`: the default tier table, from `config.DEFAULT_TIERS`;
- `<!-- public-api -->`: the names `axione_asgi.__all__` exports, with the first
  line of each one's docstring.

Descriptions come from `Field(description=...)` when given, else from the
attribute docstring or the `#` comment lines right above the field in the
model's source, else from the class docstring (for nested tables).
"""

from __future__ import annotations

import ast
import enum
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = [
    "FALLBACK_NOTES",
    "PLACEHOLDER",
    "Row",
    "on_page_markdown",
    "render",
    "render_public_api",
    "render_tier_table",
    "rows",
]

PLACEHOLDER = "<!-- config-reference -->"
TIER_PLACEHOLDER = "<!-- tier-table -->"
API_PLACEHOLDER = "<!-- public-api -->"


class Row(typing.NamedTuple):
    """One configuration key as the reference shows it."""

    table: str  # the TOML table it lives in: "" (top level), "storage", "providers.NAME", ...
    key: str  # the full dotted path: "storage.counters", "providers.NAME.kind"
    type: str
    default: str
    description: str


# -- descriptions ----------------------------------------------------------------
# Used only for fields whose source has no description, comment or docstring
# (the source wins as soon as it has one). tests/test_docs.py checks that each
# names a real key, so a renamed field cannot leave a stale note behind.
FALLBACK_NOTES: dict[str, str] = {
    "prefix": "Where `axione serve` mounts the API. `create_app()` ignores it: a host picks "
    "its own mount path.",
    "max_body_bytes": "Largest request body accepted; larger ones get 413 `request_too_large`.",
    "key_cache_ttl_s": "How long a key lookup is cached per process: a revocation or tier "
    "change takes effect within this time. 0 disables the cache.",
    "storage.keys": "The key store: `sqlite:///PATH` or `memory://`.",
    "storage.ledger": "The per-request usage ledger: `sqlite:///PATH` or `memory://`.",
    "storage.counters": "The daily counters, a `limits` storage URI: `memory://` (one "
    "process) or `redis://host:6379/0` (shared by workers; needs `axione-asgi[redis]`).",
    "providers.NAME.kind": "Which wire format the upstream speaks.",
    "providers.NAME.base_url": "The upstream's base URL; the provider's public one when unset "
    "(required for `openai-compatible`).",
    "providers.NAME.api_key_env": "The environment variable holding the upstream key, read "
    "once at start-up.",
    "providers.NAME.timeout_s": "Read/write timeout of one upstream call, in seconds.",
    "providers.NAME.connect_timeout_s": "Connect timeout of one upstream call, in seconds.",
    "providers.NAME.models": "Chat models: public name (the part after `NAME/`) -> the "
    "upstream's own id.",
    "providers.NAME.headers": "Extra headers sent with every upstream request.",
    "providers.NAME.max_connections": "Size of the provider's pooled `httpx` client (per worker).",
    "tiers.N.requests_per_day": "Requests a key of this tier may make per UTC day.",
    "tiers.N.tokens_per_day": "Tokens (prompt + completion) a key of this tier may use per "
    "UTC day.",
    "tier_policy.auto_upgrade": "Whether keys are promoted automatically at day rollover.",
    "tier_policy.threshold": "Share of the previous day's request or token limit a key must "
    "have used to be promoted.",
    "tier_policy.max_auto_tier": "The highest tier automatic promotion reaches; above it "
    "only an operator sets tiers.",
    "keys[].name": "A label shown by `axione keys list`.",
    "keys[].key_sha256": "Hex SHA-256 of the full key (`sk-ax-...`); the key itself is never "
    "written down.",
    "keys[].tier": "The key's tier; config keys are never promoted automatically.",
    "keys[].models": "Public model ids this key may use; all when unset.",
    "retry.max_retries": "Retries of one model before falling back to the next.",
    "retry.backoff_s": "First retry delay; it doubles per retry (with jitter), unless the "
    "upstream sends `Retry-After`.",
    "retry.backoff_max_s": "Largest delay between two retries.",
    "request.max_messages": "Most messages one chat request may hold.",
}


# -- descriptions from the source ---------------------------------------------
def _source_notes(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the comment lines above it or the docstring below it, in the class body."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    notes: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        after = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            notes[name] = inspect.cleandoc(after.value.value)
            continue
        comments: list[str] = []
        j = node.lineno - 2  # the line above, 0-based
        while j >= 0 and lines[j].strip().startswith("#"):
            comments.insert(0, lines[j].strip().lstrip("#").strip())
            j -= 1
        if comments:
            notes[name] = " ".join(comments)
    return notes


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


# -- types ----------------------------------------------------------------------
def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if _is_model(tp):
        return "table"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)


def _constraints(info: FieldInfo) -> str:
    symbols = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    out: list[str] = []
    for meta in info.metadata:
        for attr, symbol in symbols.items():
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{symbol} {value}")
        for attr in ("min_length", "max_length", "pattern"):
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{attr.replace('_', ' ')} {value}")
    return ", ".join(out)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_defaults=True, mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.default if info.default_factory is None else info.default_factory()
    if isinstance(value, BaseModel):
        return "(its table)"
    plain = _plain(value)
    if plain is None:
        return "`None`"
    if isinstance(plain, bool):
        return f"`{str(plain).lower()}`"
    return f"`{json.dumps(plain, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    # A literal pipe would split the Markdown table's cell.
    return text.replace("|", "&#124;").replace("\n", " ")


# -- the walk -------------------------------------------------------------------
def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """How a field holds a sub-model: ("", M) a table, (".NAME", M) per key, ("[]", M) a list."""
    if _is_model(annotation):
        return "", annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict and len(args) == 2 and _is_model(args[1]):
        placeholder = "N" if args[0] is int else "NAME"
        return f".{placeholder}", args[1]
    if origin is list and args and _is_model(args[0]):
        return "[]", args[0]
    return None


def rows(model: type[BaseModel] | None = None, prefix: str = "") -> Iterator[Row]:
    """Every configuration key under `model` (`AxioneConfig` by default), depth first."""
    if model is None:
        from axione_asgi.config import AxioneConfig

        model = AxioneConfig
    notes = _source_notes(model)
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        sub = _nested(info.annotation)
        type_name = _type_name(info.annotation)
        if sub is not None:
            suffix, sub_model = sub
            type_name = {"": "table", "[]": "array of tables"}.get(suffix, "table of tables")
        limits = _constraints(info)
        if limits:
            type_name += f" ({limits})"
        description = info.description or notes.get(name, "") or FALLBACK_NOTES.get(key, "")
        if not description and sub is not None:
            description = _first_paragraph(sub[1].__doc__)
        yield Row(prefix, key, type_name, _default(info), description)
        if sub is not None:
            nested.append((key + sub[0], sub[1]))
    for sub_prefix, sub_model in nested:
        yield from rows(sub_model, sub_prefix)


def _parent_key(table: str) -> str:
    """The key whose value a table is: `providers` for `providers.NAME`, `keys` for `keys[]`."""
    for suffix in ("[]", ".NAME", ".N"):
        if table.endswith(suffix):
            return table[: -len(suffix)]
    return table


def _table_title(table: str) -> str:
    if not table:
        return "Top level"
    if table.endswith("[]"):
        return f"`[[{table[:-2]}]]`"
    return f"`[{table}]`"


def render() -> str:
    """The whole reference as Markdown: a section and a table per TOML table."""
    from axione_asgi.config import AxioneConfig

    by_table: dict[str, list[Row]] = {}
    all_rows = list(rows(AxioneConfig))
    parents = {r.key: r for r in all_rows}
    for row in all_rows:
        by_table.setdefault(row.table, []).append(row)
    out: list[str] = []
    for table, table_rows in by_table.items():
        out.append(f"### {_table_title(table)}\n")
        parent = parents.get(_parent_key(table))
        if table and parent is not None and parent.description:
            out.append(parent.description + "\n")
        out.append("| Key | Type | Default | Description |")
        out.append("|---|---|---|---|")
        for r in table_rows:
            out.append(
                f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.description)} |"
            )
        out.append("")
    return "\n".join(out)


def render_tier_table() -> str:
    """The default tiers (`DEFAULT_TIERS`) and how each is reached under the default policy."""
    from axione_asgi.config import DEFAULT_TIERS, TierPolicy

    policy = TierPolicy()
    out = ["| Tier | Requests per day | Tokens per day | How reached |", "|---|---|---|---|"]
    for tier, limits in sorted(DEFAULT_TIERS.items()):
        if tier == min(DEFAULT_TIERS):
            how = "every new key"
        elif tier <= policy.max_auto_tier:
            how = "automatic"
        else:
            how = "set by an operator only"
        out.append(f"| {tier} | {limits.requests_per_day:,} | {limits.tokens_per_day:,} | {how} |")
    return "\n".join(out) + "\n"


def render_public_api() -> str:
    """The names `axione_asgi` exports, each with its docstring's first line."""
    import axione_asgi

    out = ["| Name | What it is |", "|---|---|"]
    for name in sorted(axione_asgi.__all__):
        obj = getattr(axione_asgi, name)
        out.append(f"| `{name}` | {_cell(_first_paragraph(inspect.getdoc(obj)))} |")
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: fill the placeholders of the page being built."""
    if PLACEHOLDER in markdown:
        markdown = markdown.replace(PLACEHOLDER, render())
    if TIER_PLACEHOLDER in markdown:
        markdown = markdown.replace(TIER_PLACEHOLDER, render_tier_table())
    if API_PLACEHOLDER in markdown:
        markdown = markdown.replace(API_PLACEHOLDER, render_public_api())
    return markdown
