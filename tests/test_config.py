"""AxioneConfig: the TOML of SPEC section 6, validation errors, the embedded default."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from axione_asgi import AxioneConfig, ConfigError, create_app

CI_DIGEST = hashlib.sha256(b"sk-ax-ci").hexdigest()
SPEC_TOML = """\
prefix = "/api/v1"
max_body_bytes = 4_000_000

[storage]
keys = "sqlite:///axione.db"
ledger = "sqlite:///axione.db"
counters = "memory://"

[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
timeout_s = 60
models = { "gpt-4o" = "gpt-4o", "gpt-4o-mini" = "gpt-4o-mini", "gpt-3.5-turbo" = "gpt-3.5-turbo" }

[providers.anthropic]
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"
models = { "claude-3.5-sonnet" = "claude-3-5-sonnet-latest" }

[providers.google]
kind = "gemini"
base_url = "https://generativelanguage.googleapis.com"
api_key_env = "GEMINI_API_KEY"
models = { "gemini-2.5-flash-lite" = "gemini-2.5-flash-lite" }

[providers.mistral]
kind = "mistral"
base_url = "https://api.mistral.ai/v1"
api_key_env = "MISTRAL_API_KEY"
models = { "mistral-large" = "mistral-large-latest" }

[tiers.1]
requests_per_day = 1000
tokens_per_day = 250000

[tier_policy]
auto_upgrade = true
threshold = 0.8
max_auto_tier = 4

[[keys]]
name = "ci"
key_sha256 = "CI_DIGEST"
tier = 1
""".replace("CI_DIGEST", CI_DIGEST)


def load(tmp_path: Path, text: str) -> AxioneConfig:
    path = tmp_path / "axione.toml"
    path.write_text(text)
    return AxioneConfig.from_toml(path)


def test_spec_example_toml_loads(tmp_path: Path) -> None:
    config = load(tmp_path, SPEC_TOML)
    assert set(config.providers) == {"openai", "anthropic", "google", "mistral"}
    assert config.providers["mistral"].models == {"mistral-large": "mistral-large-latest"}
    assert config.providers["google"].kind == "gemini"
    assert config.keys[0].name == "ci"
    assert config.tier_table()[1].requests_per_day == 1000
    assert config.tier_policy.max_auto_tier == 4


def test_tier_override_keeps_the_other_default_tiers(tmp_path: Path) -> None:
    config = load(tmp_path, "[tiers.2]\nrequests_per_day = 7\ntokens_per_day = 8\n")
    table = config.tier_table()
    assert table[2].requests_per_day == 7
    assert table[5].requests_per_day == 120_000


@pytest.mark.parametrize(("given", "expected"), [("/api/v1/", "/api/v1"), ("ai", "/ai"), ("/", "")])
def test_prefix_is_normalised(given: str, expected: str) -> None:
    assert AxioneConfig(prefix=given).prefix == expected


def test_config_error_is_one_line_naming_file_key_and_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, '[storage]\nkeys = "mongodb://x"\n')
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "axione.toml") in message
    assert "storage.keys" in message
    assert "sqlite" in message


def test_bad_static_key_hash_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keys"):
        load(tmp_path, '[[keys]]\nname = "x"\nkey_sha256 = "abc"\n')


def test_provider_name_with_a_slash_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="providers"):
        AxioneConfig.from_mapping({"providers": {"a/b": {"kind": "demo"}}})


def test_negative_timeout_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        load(tmp_path, '[providers.o]\nkind = "openai"\ntimeout_s = -1\n')


# -- the upstream client ------------------------------------------------------------------


def test_transport_is_auto_unless_one_is_named(tmp_path: Path) -> None:
    text = '[providers.a]\nkind = "openai"\n\n[providers.b]\nkind = "openai"\n'
    config = load(tmp_path, text + 'transport = "httptools"\n')
    assert config.providers["a"].transport == "auto"
    assert config.providers["b"].transport == "httptools"


def test_unknown_transport_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="transport"):
        load(tmp_path, '[providers.o]\nkind = "openai"\ntransport = "requests"\n')


@pytest.mark.parametrize("package", ["aiohttp", "httptools"])
def test_a_transport_whose_package_is_missing_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    # Refused at start-up, naming the package, rather than failing on the first request.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == package else find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=f"pip install {package}"):
        load(tmp_path, f'[providers.o]\nkind = "openai"\ntransport = "{package}"\n')


# -- the embedded default ------------------------------------------------------------------


def test_embedded_default_without_keys_in_env_has_only_demo() -> None:
    assert list(AxioneConfig.embedded_default({}).providers) == ["demo"]


def test_embedded_default_enables_each_provider_whose_key_is_set() -> None:
    env = {"OPENAI_API_KEY": "sk-1", "MISTRAL_API_KEY": "m-1"}
    assert set(AxioneConfig.embedded_default(env).providers) == {"demo", "openai", "mistral"}


def test_embedded_default_enables_all_four_known_providers() -> None:
    env = {
        "OPENAI_API_KEY": "a",
        "ANTHROPIC_API_KEY": "b",
        "GEMINI_API_KEY": "c",
        "MISTRAL_API_KEY": "d",
    }
    kinds = {p.kind for p in AxioneConfig.embedded_default(env).providers.values()}
    assert kinds == {"demo", "openai", "anthropic", "gemini", "mistral"}


def test_embedded_default_ignores_an_empty_key() -> None:
    assert "openai" not in AxioneConfig.embedded_default({"OPENAI_API_KEY": ""}).providers


def test_embedded_default_stores_keys_in_sqlite_in_the_working_folder() -> None:
    storage = AxioneConfig.embedded_default({}).storage
    assert storage.keys.startswith("sqlite:///")
    assert not storage.keys.removeprefix("sqlite:///").startswith("/")
    assert storage.counters == "memory://"


def test_embedded_default_app_lists_env_keyed_provider_models() -> None:
    config = AxioneConfig.embedded_default({"OPENAI_API_KEY": "sk-x"})
    config = config.model_copy(
        update={"storage": config.storage.model_copy(update={"keys": "memory://"})}
    )
    app = create_app(config, environ={"OPENAI_API_KEY": "sk-x"})
    public = {r.public_id for r in app.runtime.registry.routes()}
    assert "openai/gpt-4o" in public
    assert "demo/echo" in public
    assert not any(p.startswith("anthropic/") for p in public)
