"""The `axione` command: serve, keys, usage."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial

from starlette.types import ASGIApp

from axione_asgi.admin.service import AdminService
from axione_asgi.config import AxioneConfig, ConfigError
from axione_asgi.key_events import open_key_events
from axione_asgi.standalone import CONFIG_ENV, load_config
from axione_asgi.stores import open_key_store

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML configuration file (default: embedded default)")

    parser = argparse.ArgumentParser(
        prog="axione", description="Axione: an OpenAI-compatible AI gateway.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the gateway under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")

    keys = sub.add_parser("keys", parents=[common], help="manage API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", parents=[common], help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--tier", type=int, default=1)
    ksub.add_parser("list", parents=[common], help="list keys (never their secrets)")
    revoke = ksub.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id")
    set_tier = ksub.add_parser("set-tier", parents=[common], help="set a key's tier")
    set_tier.add_argument("key_id")
    set_tier.add_argument("tier", type=int)

    usage = sub.add_parser("usage", parents=[common], help="today's usage of one key or all")
    usage.add_argument("key_id", nargs="?")
    usage.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `axione` console script."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "serve":
            return _serve(args, config)
        if args.command == "keys":
            return asyncio.run(_keys(args, config))
        return asyncio.run(_usage(args, config))
    except ConfigError as exc:
        print(f"axione: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, LookupError) as exc:
        print(f"axione: {exc}", file=sys.stderr)
        return 1


async def _keys(args: argparse.Namespace, config: AxioneConfig) -> int:
    store = open_key_store(config.storage.keys, config.keys)
    # With the counters on Redis, a revocation or new tier is pushed to every
    # running replica at once (else they see it within key_cache_ttl_s).
    events = open_key_events(config.storage.counters)
    service = AdminService(config, store, key_events=events)  # the admin API's too
    try:
        return await _keys_command(args, service)
    finally:
        await service.aclose()
        await store.close()
        if events is not None:
            await events.aclose()


async def _keys_command(args: argparse.Namespace, service: AdminService) -> int:
    if args.keys_command == "create":
        record, secret = await service.create_key(args.name, args.tier)
        print(f"created key {record.id} (name {record.name!r}, tier {record.tier})")
        print("store it now: it is shown only once")
        print(secret)
        return 0
    if args.keys_command == "list":
        rows = [("ID", "NAME", "TIER", "PREFIX", "CREATED", "REVOKED")]
        for r in await service.list_keys():
            created = r.created.strftime("%Y-%m-%d %H:%M:%S") if r.source == "store" else "(config)"
            rows.append(
                (r.id, r.name, str(r.tier), r.prefix, created, "yes" if r.revoked else "no")
            )
        _print_table(rows)
        return 0
    if args.keys_command == "revoke":
        await service.revoke_key(args.key_id)
        print(f"revoked {args.key_id}")
        return 0
    await service.set_tier(args.key_id, args.tier)
    print(f"key {args.key_id} is now tier {args.tier}")
    return 0


async def _usage(args: argparse.Namespace, config: AxioneConfig) -> int:
    store = open_key_store(config.storage.keys, config.keys)
    service = AdminService(config, store)
    try:
        reports = await service.usage(args.key_id)
    finally:
        await service.aclose()
        await store.close()
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    rows = [("KEY", "TIER", "DAY", "REQUESTS", "TOKENS", "RESETS")]
    for rep in reports:
        rows.append(
            (
                rep["key_id"],
                str(rep["tier"]),
                rep["day"],
                f"{rep['used']['requests']}/{rep['limits']['requests_per_day']}",
                f"{rep['used']['tokens']}/{rep['limits']['tokens_per_day']}",
                rep["resets_at"],
            )
        )
    _print_table(rows)
    return 0


def printable(text: str) -> str:
    """`text` with every character a terminal would act on escaped (`\\n`, `\\x1b`, `\\u202e`).

    Key names are whatever a client of the admin API sent: a newline would
    forge a row, an escape code would drive the operator's terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _serve(args: argparse.Namespace, config: AxioneConfig) -> int:
    import uvicorn

    asyncio.run(_first_key(config))
    # Built here first, so a bad config fails before workers fork; a single
    # worker serves this very app rather than building it a second time.
    from axione_asgi.standalone import build_standalone, server_options, serving

    app = build_standalone(config)
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    else:
        os.environ.pop(CONFIG_ENV, None)
    names = ", ".join(config.providers) or "none"
    print(
        f"axione: serving on http://{args.host}:{args.port}{config.prefix} "
        f"(providers: {names}; workers: {args.workers})",
        flush=True,
    )
    several = args.workers > 1
    factory: str | Callable[[], ASGIApp] = (
        "axione_asgi.standalone:standalone_app" if several else partial(serving, app, config)
    )
    uvicorn.run(
        factory,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers if several else None,
        # The gateway has no WebSocket route: uvicorn need not load a protocol for one.
        ws="none",
        log_level=args.log_level,
        access_log=False,
        # [server]: connections, request heads, keep-alive, the shutdown's grace.
        **server_options(config.server),
    )
    return 0


async def _first_key(config: AxioneConfig) -> None:
    """On first start with no keys at all, make one and print it once."""
    if config.keys:
        return
    if config.storage.keys == "memory://":
        print(
            "axione: warning: keys are in memory and none are declared in [[keys]]: "
            "no request can authenticate",
            flush=True,
        )
        return
    store = open_key_store(config.storage.keys)
    try:
        if await store.list():
            return
        record, secret = await store.create("default", 1)
    finally:
        await store.close()
    print(f"axione: no keys yet, so one was created: {record.id}")
    print("axione: use it as 'Authorization: Bearer <key>'; it is shown only once:")
    print(secret, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
