"""The `axione` command: keys create|list|revoke|set-tier, and bad configuration at start."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from axione_asgi.cli import main

KEY_LINE_PREFIX = "sk-ax-"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "axione.toml"
    path.write_text(
        f'[storage]\nkeys = "sqlite:///{tmp_path / "keys.db"}"\n'
        f'ledger = "sqlite:///{tmp_path / "keys.db"}"\n'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def create(
    capsys: pytest.CaptureFixture[str], config: Path, name: str, *extra: str
) -> tuple[str, str]:
    code, out, err = run(capsys, "keys", "create", "--config", str(config), "--name", name, *extra)
    assert code == 0, err
    lines = out.strip().splitlines()
    key_id = next(w for w in lines[0].split() if w.startswith("key_"))
    return key_id, lines[-1]


def listed(capsys: pytest.CaptureFixture[str], config: Path) -> list[list[str]]:
    code, out, err = run(capsys, "keys", "list", "--config", str(config))
    assert code == 0, err
    return [line.split() for line in out.strip().splitlines()]


# -- keys create ----------------------------------------------------------------------


def test_keys_create_prints_the_key_alone_on_the_last_line(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, out, _ = run(capsys, "keys", "create", "--config", str(config), "--name", "ci")
    last = out.strip().splitlines()[-1]
    assert code == 0
    assert last.startswith(KEY_LINE_PREFIX)
    assert last == last.strip() and " " not in last


def test_keys_create_prints_the_key_id_on_its_first_line(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    key_id, _ = create(capsys, config, "ci")
    assert [row[0] for row in listed(capsys, config)[1:]] == [key_id]


def test_keys_create_with_tier_sets_the_tier(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    key_id, _ = create(capsys, config, "gold", "--tier", "3")
    row = next(r for r in listed(capsys, config) if r[0] == key_id)
    assert row[2] == "3"


def test_keys_create_with_an_unknown_tier_fails_clearly(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, out, err = run(
        capsys, "keys", "create", "--config", str(config), "--name", "x", "--tier", "9"
    )
    assert code != 0
    assert "tier 9" in err and "known tiers" in err
    assert KEY_LINE_PREFIX not in out


# -- keys list ---------------------------------------------------------------------------


def test_keys_list_shows_id_name_tier_prefix_created_revoked(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    key_id, key = create(capsys, config, "alice")
    header, row = listed(capsys, config)
    assert header == ["ID", "NAME", "TIER", "PREFIX", "CREATED", "REVOKED"]
    assert row[0] == key_id
    assert row[1] == "alice"
    assert row[2] == "1"
    assert key.startswith(row[3]) and len(row[3]) < len(key)
    assert row[-1] == "no"


def test_keys_list_never_shows_a_secret(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    _, key = create(capsys, config, "alice")
    _, out, _ = run(capsys, "keys", "list", "--config", str(config))
    assert key not in out


# -- keys revoke and set-tier ---------------------------------------------------------------


def test_keys_revoke_marks_the_key_revoked(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    key_id, _ = create(capsys, config, "bob")
    code, _, _ = run(capsys, "keys", "revoke", "--config", str(config), key_id)
    assert code == 0
    assert listed(capsys, config)[1][-1] == "yes"


def test_keys_revoke_of_an_unknown_id_fails(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, _, err = run(capsys, "keys", "revoke", "--config", str(config), "key_nope")
    assert code != 0
    assert "key_nope" in err


def test_keys_set_tier_changes_the_tier(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    key_id, _ = create(capsys, config, "carol")
    code, _, _ = run(capsys, "keys", "set-tier", "--config", str(config), key_id, "5")
    assert code == 0
    assert listed(capsys, config)[1][2] == "5"


def test_keys_set_tier_to_an_unknown_tier_fails_clearly(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    key_id, _ = create(capsys, config, "carol")
    code, _, err = run(capsys, "keys", "set-tier", "--config", str(config), key_id, "0")
    assert code != 0
    assert "tier 0" in err
    assert listed(capsys, config)[1][2] == "1"


def test_config_declared_key_cannot_be_revoked_by_the_cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    digest = hashlib.sha256(b"sk-ax-from-config").hexdigest()
    path = tmp_path / "axione.toml"
    path.write_text(
        f'[storage]\nkeys = "sqlite:///{tmp_path / "k.db"}"\n\n'
        f'[[keys]]\nname = "ci"\nkey_sha256 = "{digest}"\n'
    )
    key_id = listed(capsys, path)[1][0]
    code, _, err = run(capsys, "keys", "revoke", "--config", str(path), key_id)
    assert code != 0
    assert "config" in err
    assert listed(capsys, path)[1][-1] == "no"


# -- bad configuration: exit 2, one line naming the file, key and problem --------------------


def bad_config(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    code, _, err = run(capsys, "keys", "list", "--config", str(path))
    assert code == 2
    assert err.count("\n") == 1, err
    assert str(path) in err
    return err


def test_unknown_config_key_names_file_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('prefix = "/v1"\nmax_body_byte = 10\n')
    assert "max_body_byte" in bad_config(capsys, path)


def test_unknown_nested_config_key_names_its_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[providers.openai]\nkind = "openai"\nbase_ur = "http://x"\n')
    assert "providers.openai.base_ur" in bad_config(capsys, path)


def test_wrong_config_type_names_file_key_and_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('max_body_bytes = "big"\n')
    err = bad_config(capsys, path)
    assert "max_body_bytes" in err and "integer" in err


def test_unknown_provider_kind_names_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[providers.x]\nkind = "skynet"\n')
    assert "providers.x.kind" in bad_config(capsys, path)


def test_bad_toml_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("prefix = \n")
    assert "TOML" in bad_config(capsys, path)


def test_missing_config_file_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "not found" in bad_config(capsys, tmp_path / "absent.toml")


def test_serve_with_bad_config_exits_2_before_serving(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("nonsense = 1\n")
    code, out, err = run(capsys, "serve", "--config", str(path), "--port", "1")
    assert code == 2
    assert "serving" not in out
    assert "nonsense" in err


# -- usage ------------------------------------------------------------------------------------


def test_usage_of_a_fresh_key_shows_zero_use(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    key_id, _ = create(capsys, config, "dave")
    code, out, err = run(capsys, "usage", "--config", str(config), key_id)
    assert code == 0, err
    assert key_id in out
    assert "0/1000" in out
