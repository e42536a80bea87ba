"""The usage page: `/usage/history` from the ledger, and the page itself in headless Chromium."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.quota.ledger import UsageRecord
from tests.fixed_provider import COMPLETION_TOKENS, PROMPT_TOKENS, FixedProvider, chat_body
from tests.helpers import assert_spec_error, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "artifacts" / "dashboard.png"
CHROMIUM = os.environ.get("AXIONE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)
TIER = 2  # 4,000 requests and 1,000,000 tokens a day
TODAY_REQUESTS = 3
TODAY_TOKENS = TODAY_REQUESTS * (PROMPT_TOKENS + COMPLETION_TOKENS)
# Earlier days, written straight into the ledger: days ago -> (requests, tokens each).
PAST = {1: (40, 500), 2: (25, 800), 7: (60, 300), 29: (10, 1000)}


@dataclass
class Served:
    app: AxioneApp
    base_url: str
    key_id: str
    secret: str


def _seed_past(app: AxioneApp, key_id: str) -> None:
    app.runtime.quota.ledger.write(
        [
            UsageRecord(
                time=NOW - timedelta(days=ago),
                key_id=key_id,
                model="fixed/m",
                provider="fixed",
                prompt_tokens=tokens // 2,
                completion_tokens=tokens - tokens // 2,
                estimated=False,
                status=200,
                latency_ms=1.0,
            )
            for ago, (count, tokens) in PAST.items()
            for _ in range(count)
        ]
    )


def _wait_for_ledger(app: AxioneApp, key_id: str, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(app.runtime.quota.ledger.records(key_id=key_id)) < count:
        assert time.monotonic() < deadline, "the ledger writer did not catch up"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    config = AxioneConfig.from_mapping({"storage": {"keys": "memory://", "ledger": "memory://"}})
    app = create_app(config, providers={"fixed": FixedProvider()}, clock=lambda: NOW)
    record, secret = anyio.run(app.runtime.key_store.create, "dashboard", TIER)
    _seed_past(app, record.id)
    with serve_in_thread(app) as base_url:
        for _ in range(TODAY_REQUESTS):
            response = httpx.post(
                f"{base_url}/chat/completions",
                json=chat_body(),
                headers={"authorization": f"Bearer {secret}"},
            )
            assert response.status_code == 200
        _wait_for_ledger(app, record.id, sum(c for c, _ in PAST.values()) + TODAY_REQUESTS)
        yield Served(app, base_url, record.id, secret)


def _get(served: Served, path: str, **headers: str) -> httpx.Response:
    headers.setdefault("authorization", f"Bearer {served.secret}")
    return httpx.get(f"{served.base_url}{path}", headers=headers)


# -- /usage/history --------------------------------------------------------------------


def test_history_lists_the_last_30_days_oldest_first_from_the_ledger(served: Served) -> None:
    body = _get(served, "/usage/history").json()
    days = body["data"]
    assert (body["key_id"], len(days)) == (served.key_id, 30)
    assert days[0]["day"] == "2025-02-14" and days[-1]["day"] == "2025-03-15"
    by_day = {d["day"]: (d["requests"], d["total_tokens"]) for d in days}
    for ago, (count, tokens) in PAST.items():
        assert by_day[(NOW - timedelta(days=ago)).date().isoformat()] == (count, count * tokens)
    assert by_day["2025-03-15"] == (TODAY_REQUESTS, TODAY_TOKENS)
    assert by_day["2025-03-10"] == (0, 0)


def test_history_needs_a_key_and_is_not_counted(served: Served) -> None:
    assert_spec_error(_get(served, "/usage/history", authorization=""), 401, "missing_api_key")
    before = _get(served, "/usage").json()["used"]["requests"]
    _get(served, "/usage/history")
    assert _get(served, "/usage").json()["used"]["requests"] == before


def test_history_refuses_a_bad_day_count(served: Served) -> None:
    assert_spec_error(_get(served, "/usage/history?days=0"), 400, "invalid_value")


def test_dashboard_page_is_served_without_a_key(served: Served) -> None:
    response = _get(served, "/dashboard", authorization="")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    assert len(response.text.splitlines()) < 400


# -- the page in Chromium ----------------------------------------------------------------


def test_dashboard_in_chromium_shows_todays_use_against_the_limits_and_30_days(
    served: Served,
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 860})
            page.goto(f"{served.base_url}/dashboard")
            page.fill("#key", served.secret)
            page.click("#show")
            page.wait_for_selector("#report:not([hidden])", timeout=10_000)
            text = {
                name: page.inner_text(f"#{name}")
                for name in (
                    "key-id",
                    "tier",
                    "day",
                    "requests-used",
                    "requests-limit",
                    "requests-remaining",
                    "tokens-used",
                    "tokens-limit",
                    "tokens-remaining",
                )
            }
            bars = page.eval_on_selector_all(
                "#chart rect.bar", "els => els.map(e => [e.dataset.day, Number(e.dataset.value)])"
            )
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            print(f"dashboard screenshot: {SCREENSHOT}")
        finally:
            browser.close()
    assert text == {
        "key-id": served.key_id,
        "tier": str(TIER),
        "day": "2025-03-15",
        "requests-used": str(TODAY_REQUESTS),
        "requests-limit": "4,000",
        "requests-remaining": f"{4000 - TODAY_REQUESTS:,}",
        "tokens-used": str(TODAY_TOKENS),
        "tokens-limit": "1,000,000",
        "tokens-remaining": f"{1_000_000 - TODAY_TOKENS:,}",
    }
    assert len(bars) == 30
    values = dict(bars)
    assert values["2025-03-15"] == TODAY_TOKENS
    assert values["2025-03-14"] == 40 * 500 and values["2025-02-14"] == 10 * 1000
    assert SCREENSHOT.stat().st_size > 10_000
