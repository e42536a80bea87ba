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
    """The test suite (needs Redis on 127.0.0.1:6379 for the shared-counter tests)."""
    session.install("-e", ".[test,redis]")
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
    session.install("-e", ".[redis,metrics,otel]", "mypy", "types-cachetools")
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
