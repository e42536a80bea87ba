"""examples/cluster: the Compose file parses and agrees with its HAProxy and Axione configs.

This machine has no container engine, so the stack itself is not run here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from axione_asgi import AxioneConfig

CLUSTER = Path(__file__).resolve().parent.parent / "examples" / "cluster"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml unchecked")
    doc: dict[str, Any] = yaml.safe_load((CLUSTER / "compose.yaml").read_text())
    return doc


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", value)
    assert match, value
    return float(match.group(1))


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "axione-1", "axione-2", "haproxy"} <= set(services)
    for name in ("axione-1", "axione-2"):
        replica = services[name]
        assert "/api/v1/readyz" in " ".join(replica["healthcheck"]["test"])
        assert "./axione.toml:/etc/axione/axione.toml:ro" in replica["volumes"]
        assert "axione serve" in replica["build"]["dockerfile_inline"].replace('", "', " ")


def test_the_replicas_config_is_valid_and_shared(compose: dict[str, Any]) -> None:
    config = AxioneConfig.from_toml(CLUSTER / "axione.toml")
    assert config.storage.counters.startswith("redis://redis:")
    for uri in (config.storage.keys, config.storage.ledger, config.storage.responses):
        assert uri is not None and uri.startswith("postgresql://")
        assert "@postgres:5432/" in uri
    # Compose must not SIGKILL a replica before its drain and graceful shutdown end.
    grace = _seconds(compose["services"]["axione-1"]["stop_grace_period"])
    assert grace > config.server.drain_s + config.server.graceful_shutdown_s


def test_haproxy_checks_readyz_on_every_replica_within_the_drain(compose: dict[str, Any]) -> None:
    text = (CLUSTER / "haproxy.cfg").read_text()
    assert "option httpchk GET /api/v1/readyz" in text
    servers = re.findall(r"^\s*server (\S+) (\S+):8000 check$", text, re.M)
    assert [name for name, _ in servers] == ["axione-1", "axione-2"]
    assert all(host in compose["services"] for _, host in servers)
    inter = re.search(r"inter (\d+)s fall (\d+)", text)
    assert inter
    config = AxioneConfig.from_toml(CLUSTER / "axione.toml")
    # Taken out of the backend before the drain ends and the listener closes.
    assert int(inter.group(1)) * int(inter.group(2)) < config.server.drain_s
    # Unchecked backups: when a shared store takes every replica out, they
    # still answer (in the API's error format), not HAProxy.
    backups = re.findall(r"^\s*server \S+ (\S+):8000 backup$", text, re.M)
    assert backups == ["axione-1", "axione-2"]
