"""Tasks: tests, lint, typecheck, bench. `nox -s tests` installs what it needs."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite (needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432)."""
    session.install("-e", ".[test,redis,postgres]")
    session.run("pytest", *(session.posargs or ["-q", "-p", "no:cacheprovider"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    paths = [
        p for p in ("axione_asgi", "tests", "benchmarks", "examples", "docs") if Path(p).exists()
    ]
    session.run("ruff", "check", *paths, "noxfile.py")
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[redis,metrics,otel,fast,postgres]", "mypy", "types-cachetools")
    session.run("mypy", "--strict", "axione_asgi")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site: `mkdocs build --strict` (warnings fail the build)."""
    session.install("-e", ".", "mkdocs-material")
    site = session.create_tmp()
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        f"{site}/site",
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark beside the fake upstream (wrk from Debian if installed); never in CI.

    `nox -s bench -- --peers litellm,portkey` adds the peers (docs/benchmarks.md).
    """
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", "--duration", "10", *session.posargs)


@nox.session(python=PYTHON)
def bench_smoke(session: nox.Session) -> None:
    """A few seconds of the benchmark harness: it runs and writes its files; no figure asserted."""
    session.install("-e", ".[bench]")
    session.run(
        "python", "benchmarks/run.py", "--smoke", "--out", session.create_tmp(), *session.posargs
    )


@nox.session(python=PYTHON)
def bench_stacks(session: nox.Session) -> None:
    """Chat at 1/16/64/256 connections on memory/SQLite and on Redis + PostgreSQL, side by side.

    Needs Redis on 127.0.0.1:6379 (flushes db 10) and PostgreSQL on 127.0.0.1:5432 (its own
    schemas `axione_bench_*` in database `test`); never in CI. docs/benchmarks.md.
    """
    session.install("-e", ".[bench,redis,postgres]")
    session.run(
        "python",
        "benchmarks/run.py",
        "--axione-stacks",
        "memory,redis-postgres",
        "--scenarios",
        "chat_c1,chat_c16,chat_c64,chat_c256",
        "--duration",
        "10",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def schemathesis(session: nox.Session) -> None:
    """Schemathesis against a live `axione serve` (~1 minute): no 500s, no schema violations."""
    session.install("-e", ".[test,redis]", "schemathesis")
    session.run(
        "python",
        "benchmarks/schemathesis_run.py",
        "--max-examples",
        "30",
        "--max-time",
        "45",
        "--",
        "--phases",
        "examples,fuzzing,stateful",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def cluster(session: nox.Session) -> None:
    """Two hosts (network namespaces) behind HAProxy, one Redis, one PostgreSQL, with faults.

    Needs root, haproxy, redis-server and the PostgreSQL server binaries; starts its own
    Redis and PostgreSQL (never the machine's). About 2 minutes; not in CI (tests/test_cluster.py
    is its reduced version there). `nox -s cluster -- --scenarios exact,revoke`. docs/cluster.md.
    """
    session.install("-e", ".[test,redis,postgres]")
    session.run("python", "benchmarks/cluster.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Soak (needs Redis on 127.0.0.1:6379, flushes db 9): `nox -s soak -- --seconds 60`."""
    session.install("-e", ".[test,redis]")
    args = session.posargs or ["--clients", "32", "--seconds", "60"]
    session.run("python", "benchmarks/soak.py", *args)
