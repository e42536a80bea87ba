"""The docs run: every ```python block of docs/ and README.md, and the config reference hook."""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from axione_asgi.config import AxioneConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HOOK = DOCS / "hooks" / "config_reference.py"

_FENCE_OPEN = re.compile(r"^(?P<indent>\s*)```(?:python|py)\s*$")
_FENCE_CLOSE = re.compile(r"^\s*```\s*$")
_NOT_RUNNABLE = re.compile(r"^\s*<!--\s*not-runnable:\s*(?P<reason>.*?)\s*-->\s*$")

# Blocks run in a fresh temporary folder holding this `axione.toml`, so a block
# may load "axione.toml" as a reader would: the demo provider, nothing on disk.
AXIONE_TOML = """\
[storage]
keys = "memory://"
ledger = "memory://"
counters = "memory://"

[providers.demo]
kind = "demo"
"""


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    not_runnable: str | None  # the reason, when marked

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of `path`, with the reason of a `not-runnable` mark before one."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not _FENCE_CLOSE.match(lines[i]):
            body.append(lines[i])
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = _NOT_RUNNABLE.match(previous)
        blocks.append(
            Block(
                path=path,
                line=start + 1,
                code=textwrap.dedent("\n".join(body)) + "\n",
                not_runnable=mark["reason"] if mark else None,
            )
        )
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    files = sorted(DOCS.rglob("*.md"))
    readme = ROOT / "README.md"
    if readme.exists():
        files.append(readme)
    return [block for path in files for block in python_blocks(path)]


BLOCKS = all_blocks()
# Blocks marked not runnable are only compiled (below), never collected as skips.
RUNNABLE = [b for b in BLOCKS if b.not_runnable is None]


def test_the_docs_have_python_blocks() -> None:
    assert any(b.not_runnable is None for b in BLOCKS)


def test_every_not_runnable_mark_gives_a_reason() -> None:
    unexplained = [b.name for b in BLOCKS if b.not_runnable is not None and not b.not_runnable]
    assert unexplained == []


def test_not_runnable_blocks_still_compile() -> None:
    for block in BLOCKS:
        if block.not_runnable is not None:
            compile(block.code, block.name, "exec")


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "axione.toml").write_text(AXIONE_TOML, encoding="utf-8")
    # A real module, so classes and dataclasses defined in a block resolve their names.
    module_name = f"_docs_block_{abs(hash(block.name))}"
    module = types.ModuleType(module_name)
    module.__file__ = str(block.path)
    monkeypatch.setitem(sys.modules, module_name, module)
    code = compile(block.code, block.name, "exec")
    exec(code, module.__dict__)


# -- the configuration reference -------------------------------------------------
def _load_hook() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference_hook", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of `model` as the reference names it, walked from `model_fields`."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.append(key)
        annotation = info.annotation
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _config_keys(annotation, key)
        elif origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            keys += _config_keys(args[1], f"{key}.{'N' if args[0] is int else 'NAME'}")
        elif origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            keys += _config_keys(args[0], f"{key}[]")
    return keys


def test_config_reference_has_a_row_for_every_field() -> None:
    rendered = _load_hook().render()
    keys = _config_keys(AxioneConfig)
    assert "storage.counters" in keys and "providers.NAME.kind" in keys
    missing = [key for key in keys if f"| `{key}` |" not in rendered]
    assert missing == []


def test_config_reference_shows_defaults_and_descriptions() -> None:
    rendered = _load_hook().render()
    row = next(line for line in rendered.splitlines() if line.startswith("| `key_cache_ttl_s` |"))
    assert "`5.0`" in row and "revocation" in row
    row = next(line for line in rendered.splitlines() if line.startswith("| `retry.deadline_s` |"))
    assert "`120.0`" in row and "retries and fallbacks included" in row


def test_fallback_notes_name_real_config_keys() -> None:
    hook = _load_hook()
    assert set(hook.FALLBACK_NOTES) <= set(_config_keys(AxioneConfig))


def test_hook_fills_every_placeholder() -> None:
    hook = _load_hook()
    page = "\n".join(["<!-- config-reference -->", "<!-- tier-table -->", "<!-- public-api -->"])
    filled = hook.on_page_markdown(page, page=None, config=None, files=None)
    assert "<!--" not in filled
    assert "| 5 | 120,000 | 30,000,000 | set by an operator only |" in filled
    assert "| `create_app` |" in filled
