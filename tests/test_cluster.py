"""The multi-host cluster test, reduced (issue 15): two hosts behind HAProxy, run for real.

Two network namespaces as two hosts, each running `axione serve --workers 2`,
behind Debian's HAProxy, sharing a Redis and a PostgreSQL that the test
starts for itself on the bridge between them (benchmarks/cluster.py, whose
full run is `nox -s cluster`). Here: 200 concurrent requests against a daily
limit of 100 give exactly 100 admissions, the ledger in PostgreSQL and the
Redis counters agree with them, and a key revoked on host 1 is refused on
host 2 within the key cache's TTL plus a second. About 20 s.

Skipped only where it cannot run: not root (network namespaces), or no `ip`
or `haproxy` (CI installs haproxy: .ci/run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from benchmarks import cluster

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (ip netns)"
    ),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs `ip` (iproute2)"),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (apt-get install)"),
]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    options = cluster.Options(requests=200, limit=100, concurrency=100, key_cache_ttl_s=5.0)
    return cluster.run_scenarios(options, ["exact", "revoke"])


def _failed(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in result["checks"] if not item["ok"]]


@pytest.mark.timeout(120)
def test_exact_limit_across_two_hosts(report: dict[str, Any]) -> None:
    result = report["scenarios"]["exact"]
    assert not _failed(result), (_failed(result), result, report.get("logs_tail"))
    assert result["answers"] == {"200": 100, "429:daily_request_limit_exceeded": 100}
    assert set(result["by_host"]) == {"h1", "h2"}
    recon = result["reconcile"]
    assert recon["ledger"]["rows"] == recon["counters"]["requests"] == 100
    assert recon["ledger"]["tokens"] == recon["counters"]["tokens"] == result["client_tokens"]


@pytest.mark.timeout(120)
def test_revocation_reaches_the_other_host(report: dict[str, Any]) -> None:
    result = report["scenarios"]["revoke"]
    assert not _failed(result), (_failed(result), result, report.get("logs_tail"))
    delay = result["h2"]["refused_by_every_worker_s"]
    assert delay is not None and delay <= result["bound_s"]


def test_teardown_left_nothing(report: dict[str, Any]) -> None:
    ours = re.compile(rf"\b{cluster.hosts.TAG}{os.getpid()}(b|[vph]\d+)\b")
    for listing in (["ip", "netns", "list"], ["ip", "-o", "link", "show"]):
        out = subprocess.run(listing, capture_output=True, text=True, check=False).stdout
        assert not ours.search(out), out
    assert report["timings"]["total_s"] < 60, report["timings"]
