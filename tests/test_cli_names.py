"""`axione keys list` prints names escaped: a name cannot add lines or drive the terminal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axione_asgi.cli import main
from axione_asgi.stores import open_key_store


def listing(capsys: pytest.CaptureFixture[str], config: Path) -> str:
    capsys.readouterr()
    assert main(["keys", "list", "--config", str(config)]) == 0
    return capsys.readouterr().out


def store_key(db: Path, name: str) -> None:
    async def create() -> None:
        store = open_key_store(f"sqlite:///{db}")
        try:
            await store.create(name, 1)
        finally:
            await store.close()

    asyncio.run(create())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "axione.toml"
    db = tmp_path / "keys.db"
    path.write_text(f'[storage]\nkeys = "sqlite:///{db}"\nledger = "sqlite:///{db}"\n')
    return path


def test_a_name_with_a_newline_and_escape_codes_stays_on_its_row(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    db = config.parent / "keys.db"
    store_key(db, "ci\nkey_fake  forged  5\x1b[2J\x1b]0;owned\x07\u202etxt.exe")
    out = listing(capsys, config)
    lines = out.strip().splitlines()
    assert len(lines) == 2  # the header and one key
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "ci\\nkey_fake" in lines[1]
    assert "\\x1b[2J" in lines[1]
    assert "\\u202e" in lines[1]


@given(name=st.text(min_size=1, max_size=30).filter(lambda n: n.strip()))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_name_prints_as_one_row_of_printable_characters(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    folder = tmp_path_factory.mktemp("names")
    db = folder / "keys.db"
    config = folder / "axione.toml"
    config.write_text(f'[storage]\nkeys = "sqlite:///{db}"\nledger = "sqlite:///{db}"\n')
    store_key(db, name.strip() or name)
    out = listing(capsys, config)
    rows = out.rstrip("\n").split("\n")
    assert len(rows) == 2
    assert all(c.isprintable() for c in rows[1])


def test_printable_names_are_shown_as_they_are(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    store_key(config.parent / "keys.db", "Équipe données 数据")
    assert "Équipe données 数据" in listing(capsys, config)
