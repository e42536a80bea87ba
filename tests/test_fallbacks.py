"""Fallbacks across models: request `models: [...]` and config `[fallbacks]`, before the first byte.

On an upstream 429, 5xx, timeout or refused connection the next model is
tried and the response's `model` names the one that answered; once a stream
has sent its first byte there is no silent switch, only an error event.
"""

from __future__ import annotations

import pytest

from tests.faults import (
    Upstreams,
    Witness,
    fault_config,
    provider_table,
    rig,
    served_upstreams,
    sse_events,
    upstreams,
    witness,
)
from tests.helpers import assert_spec_error

pytestmark = pytest.mark.anyio

__all__ = ["served_upstreams", "upstreams", "witness"]  # fixtures used here

BACKUP = "backup/gpt-4o-mini"


def two(up: Upstreams, primary_url: str | None = None, **primary_extra: object) -> dict[str, dict]:
    return {
        "primary": provider_table(
            primary_url or up.primary_url, {"gpt-4o": "gpt-4o"}, **primary_extra
        ),
        "backup": provider_table(up.backup_url, {"gpt-4o-mini": "gpt-4o-mini"}),
    }


async def test_request_models_fall_back_on_upstream_500(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status = 500
    async with rig(fault_config(two(upstreams), max_retries=1), witness) as r:
        response = await r.chat(models=[BACKUP])
        assert response.status_code == 200, response.text
        assert response.json()["model"] == BACKUP
        assert len(upstreams.primary.calls) == 2  # retried once, then the fallback
        assert upstreams.backup.last_body is not None
        assert upstreams.backup.last_body["model"] == "gpt-4o-mini"
        assert "models" not in upstreams.backup.last_body


async def test_config_fallbacks_apply_on_upstream_429(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status = 429
    config = fault_config(two(upstreams), max_retries=0, fallbacks={"primary/gpt-4o": [BACKUP]})
    async with rig(config, witness) as r:
        response = await r.chat()
        assert response.status_code == 200, response.text
        assert response.json()["model"] == BACKUP


async def test_fallback_answers_when_the_primary_hangs_past_its_timeout(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.delay_s = 2.0
    config = fault_config(two(upstreams, timeout_s=0.2), max_retries=0)
    async with rig(config, witness) as r:
        response = await r.chat(models=[BACKUP])
        assert response.json()["model"] == BACKUP


async def test_fallback_answers_when_the_primary_refuses_connections(
    upstreams: Upstreams, witness: Witness
) -> None:
    async with rig(fault_config(two(upstreams, upstreams.refused_url)), witness) as r:
        response = await r.chat(models=[BACKUP])
        assert response.json()["model"] == BACKUP


async def test_fallback_usage_is_the_answering_models_and_counted_once(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status = 503
    async with rig(fault_config(two(upstreams), max_retries=0), witness) as r:
        response = await r.chat(models=[BACKUP])
        usage = response.json()["usage"]
        (record,) = await r.ledger()
        assert record.status == 200
        assert record.prompt_tokens + record.completion_tokens == usage["total_tokens"]
        assert (await r.usage())["used"] == {"requests": 1, "tokens": usage["total_tokens"]}


async def test_ledger_names_the_model_that_answered(upstreams: Upstreams, witness: Witness) -> None:
    upstreams.primary.fail_status = 503
    async with rig(fault_config(two(upstreams), max_retries=0), witness) as r:
        await r.chat(models=[BACKUP])
        (record,) = await r.ledger()
        assert (record.model, record.provider) == (BACKUP, "backup")


async def test_no_fallback_when_the_upstream_finds_the_request_invalid(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status = 400
    async with rig(fault_config(two(upstreams)), witness) as r:
        assert_spec_error(await r.chat(models=[BACKUP]), 400)
        assert upstreams.backup.calls == []
        assert len(upstreams.primary.calls) == 1


async def test_every_fallback_down_is_503_provider_unavailable(
    upstreams: Upstreams, witness: Witness
) -> None:
    providers = two(upstreams, upstreams.refused_url)
    providers["backup"]["base_url"] = upstreams.refused_url
    async with rig(fault_config(providers, max_retries=0), witness) as r:
        assert_spec_error(await r.chat(models=[BACKUP]), 503, "provider_unavailable")


async def test_stream_falls_back_when_the_primary_fails_before_the_first_byte(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status = 503
    async with rig(fault_config(two(upstreams), max_retries=0), witness) as r:
        response = await r.chat(stream=True, models=[BACKUP])
        assert response.status_code == 200
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        assert {e["model"] for e in events[:-1]} == {BACKUP}


async def test_stream_falls_back_when_the_primary_misses_its_first_byte_timeout(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.delay_s = 2.0
    config = fault_config(two(upstreams, first_byte_timeout_s=0.2), max_retries=0)
    async with rig(config, witness) as r:
        response = await r.chat(stream=True, models=[BACKUP])
        events = sse_events(response.text)
        assert {e["model"] for e in events[:-1]} == {BACKUP}


async def test_stream_cut_after_its_first_byte_does_not_switch_model_silently(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.cut_stream_after = 2
    config = fault_config(two(upstreams), fallbacks={"primary/gpt-4o": [BACKUP]})
    async with rig(config, witness) as r:
        response = await r.chat(stream=True, models=[BACKUP])
        *chunks, last = sse_events(response.text)
        assert {c["model"] for c in chunks} == {"primary/gpt-4o"}
        assert last["error"]["type"] == "upstream_error"
        assert upstreams.backup.calls == []
