"""The admin API: operator key only (else 401/403); every action round-trips with the CLI."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from axione_asgi import AxioneConfig, ConfigError, create_app
from axione_asgi.cli import main
from tests.fixed_provider import COMPLETION_TOKENS, PROMPT_TOKENS, FixedProvider, chat_body
from tests.helpers import assert_spec_error

OPERATOR_KEY = "op-" + "0123456789abcdef" * 3
OPERATOR = {"authorization": f"Bearer {OPERATOR_KEY}"}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    db = tmp_path / "axione.db"
    path = tmp_path / "axione.toml"
    path.write_text(
        f'[storage]\nkeys = "sqlite:///{db}"\nledger = "sqlite:///{db}"\n\n'
        f'[admin]\nenabled = true\noperator_key_sha256 = "'
        f'{hashlib.sha256(OPERATOR_KEY.encode()).hexdigest()}"\n'
    )
    return path


@pytest.fixture
def admin(config_path: Path) -> Iterator[TestClient]:
    app = create_app(AxioneConfig.from_toml(config_path), providers={"fixed": FixedProvider()})
    with TestClient(app, base_url="http://axione") as client:
        yield client


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def cli_rows(capsys: pytest.CaptureFixture[str], config_path: Path) -> dict[str, list[str]]:
    out = cli(capsys, "keys", "list", "--config", str(config_path))
    return {row.split()[0]: row.split() for row in out.strip().splitlines()[1:]}


def admin_keys(admin: TestClient) -> dict[str, dict[str, object]]:
    response = admin.get("/admin/keys", headers=OPERATOR)
    assert response.status_code == 200, response.text
    return {k["id"]: k for k in response.json()["data"]}


def created_by_admin(admin: TestClient, name: str = "svc", tier: int = 1) -> tuple[str, str]:
    response = admin.post("/admin/keys", headers=OPERATOR, json={"name": name, "tier": tier})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


# -- who may call it --------------------------------------------------------------


def test_admin_without_a_key_is_401(admin: TestClient) -> None:
    assert_spec_error(admin.get("/admin/keys"), 401, "missing_api_key")


def test_admin_with_an_unknown_key_is_401(admin: TestClient) -> None:
    response = admin.get("/admin/keys", headers={"authorization": "Bearer sk-ax-nope"})
    assert_spec_error(response, 401, "invalid_api_key")


def test_admin_with_a_gateway_key_is_403(admin: TestClient) -> None:
    _, secret = created_by_admin(admin)
    response = admin.get("/admin/keys", headers={"authorization": f"Bearer {secret}"})
    assert_spec_error(response, 403, "operator_key_required")


def test_admin_with_the_operator_key_is_200(admin: TestClient) -> None:
    response = admin.get("/admin/keys", headers=OPERATOR)
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": []}


def test_operator_key_is_not_a_gateway_key(admin: TestClient) -> None:
    assert_spec_error(admin.get("/models", headers=OPERATOR), 401, "invalid_api_key")


def test_admin_is_absent_unless_enabled(tmp_path: Path) -> None:
    config = AxioneConfig.from_mapping({"storage": {"keys": "memory://", "ledger": "memory://"}})
    with TestClient(create_app(config)) as client:
        assert_spec_error(client.get("/admin/keys", headers=OPERATOR), 401, "invalid_api_key")


def test_enabled_admin_without_an_operator_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"admin: .*operator_key_sha256"):
        AxioneConfig.from_mapping({"admin": {"enabled": True}})


# -- round trips with the CLI -------------------------------------------------------


def test_key_created_by_admin_is_listed_by_the_cli(
    admin: TestClient, capsys: pytest.CaptureFixture[str], config_path: Path
) -> None:
    key_id, secret = created_by_admin(admin, "from-admin", tier=2)
    row = cli_rows(capsys, config_path)[key_id]
    assert row[1:3] == ["from-admin", "2"]
    assert secret.startswith(row[3])
    assert admin.get("/models", headers={"authorization": f"Bearer {secret}"}).status_code == 200


def test_key_created_by_the_cli_is_listed_by_admin(
    admin: TestClient, capsys: pytest.CaptureFixture[str], config_path: Path
) -> None:
    out = cli(capsys, "keys", "create", "--config", str(config_path), "--name", "from-cli")
    key_id = out.split()[2]
    assert admin_keys(admin)[key_id]["name"] == "from-cli"


def test_key_revoked_by_the_cli_is_revoked_in_admin_list(
    admin: TestClient, capsys: pytest.CaptureFixture[str], config_path: Path
) -> None:
    key_id, _ = created_by_admin(admin)
    assert admin_keys(admin)[key_id]["revoked"] is False
    cli(capsys, "keys", "revoke", "--config", str(config_path), key_id)
    assert admin_keys(admin)[key_id]["revoked"] is True


def test_key_revoked_by_admin_is_revoked_in_the_cli_and_refused_at_once(
    admin: TestClient, capsys: pytest.CaptureFixture[str], config_path: Path
) -> None:
    key_id, secret = created_by_admin(admin)
    gateway = {"authorization": f"Bearer {secret}"}
    assert admin.get("/models", headers=gateway).status_code == 200  # now cached
    response = admin.post(f"/admin/keys/{key_id}/revoke", headers=OPERATOR)
    assert response.status_code == 200 and response.json()["revoked"] is True
    assert cli_rows(capsys, config_path)[key_id][-1] == "yes"
    assert_spec_error(admin.get("/models", headers=gateway), 401, "invalid_api_key")


def test_tier_set_by_admin_is_shown_by_the_cli(
    admin: TestClient, capsys: pytest.CaptureFixture[str], config_path: Path
) -> None:
    key_id, _ = created_by_admin(admin)
    response = admin.post(f"/admin/keys/{key_id}/tier", headers=OPERATOR, json={"tier": 5})
    assert response.status_code == 200 and response.json()["tier"] == 5
    assert cli_rows(capsys, config_path)[key_id][2] == "5"


def test_tier_set_by_the_cli_is_shown_by_admin(
    admin: TestClient, capsys: pytest.CaptureFixture[str], config_path: Path
) -> None:
    key_id, _ = created_by_admin(admin)
    cli(capsys, "keys", "set-tier", "--config", str(config_path), key_id, "3")
    assert admin_keys(admin)[key_id]["tier"] == 3


def test_admin_refuses_an_unknown_tier_and_an_unknown_key(admin: TestClient) -> None:
    key_id, _ = created_by_admin(admin)
    response = admin.post(f"/admin/keys/{key_id}/tier", headers=OPERATOR, json={"tier": 9})
    assert_spec_error(response, 400, "invalid_value")
    response = admin.post("/admin/keys/key_nope/revoke", headers=OPERATOR)
    assert_spec_error(response, 404, "key_not_found")


def test_admin_create_validates_its_body(admin: TestClient) -> None:
    response = admin.post("/admin/keys", headers=OPERATOR, json={"tier": 1})
    assert_spec_error(response, 400, "missing_field")


# -- usage ------------------------------------------------------------------------------


def _traffic(admin: TestClient, secret: str, count: int) -> None:
    for _ in range(count):
        response = admin.post(
            "/chat/completions", json=chat_body(), headers={"authorization": f"Bearer {secret}"}
        )
        assert response.status_code == 200


def _wait_for_ledger(admin: TestClient, requests: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while True:
        rows: list[dict[str, object]] = admin.get("/admin/usage/models", headers=OPERATOR).json()[
            "data"
        ]
        if sum(int(str(r["requests"])) for r in rows) >= requests or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_admin_reads_usage_per_key_and_per_model(
    admin: TestClient, capsys: pytest.CaptureFixture[str], config_path: Path
) -> None:
    key_id, secret = created_by_admin(admin)
    _traffic(admin, secret, 3)
    [row] = _wait_for_ledger(admin, 3)
    assert (row["model"], row["provider"], row["requests"]) == ("fixed/m", "fixed", 3)
    assert row["total_tokens"] == 3 * (PROMPT_TOKENS + COMPLETION_TOKENS)
    [report] = admin.get("/admin/usage", params={"key_id": key_id}, headers=OPERATOR).json()["data"]
    assert report["used"] == {"requests": 3, "tokens": 3 * (PROMPT_TOKENS + COMPLETION_TOKENS)}
    history = admin.get(f"/admin/keys/{key_id}/history?days=7", headers=OPERATOR).json()["data"]
    assert len(history) == 7 and history[-1]["requests"] == 3
    out = cli(capsys, "usage", "--config", str(config_path), key_id)
    assert "3/1000" in out  # the CLI reads the same ledger
