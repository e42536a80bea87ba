"""Schemathesis against a live `axione serve`: no 500s, no answer outside /openapi.json.

Starts `axione serve` on 127.0.0.1 (demo provider, one `[[keys]]` key, memory
stores, tiers high enough never to refuse), then runs `st run` on its
`/openapi.json` with the key passed as a header, and exits with st's status.
Run: `python benchmarks/schemathesis_run.py [--max-examples 50] [--max-time 90]`
(needs `schemathesis` installed; `nox -s schemathesis` does that).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """\
prefix = "/api/v1"
[storage]
keys = "memory://"
ledger = "memory://"
counters = "memory://"
[tiers.1]
requests_per_day = 100000000
tokens_per_day = 1000000000000
[providers.demo]
kind = "demo"
[[keys]]
name = "schemathesis"
key_sha256 = "{sha}"
"""

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"axione serve exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("axione serve did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=50)
    parser.add_argument("--max-time", type=int, default=90, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("st_args", nargs="*", help="more `st run` options, after --")
    args = parser.parse_args()

    st = shutil.which("st") or shutil.which("schemathesis")
    if st is None:
        raise SystemExit("schemathesis is not installed: pip install schemathesis")
    key = "sk-ax-st-" + secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "axione.toml"
        config.write_text(CONFIG.format(sha=hashlib.sha256(key.encode()).hexdigest()))
        log = open(Path(folder) / "server.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [sys.executable, "-m", "axione_asgi.cli", "serve", "--config", str(config),
             "--port", str(port), "--log-level", "warning"],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
        )  # fmt: skip
        try:
            wait_for(port, server)
            base = f"http://127.0.0.1:{port}/api/v1"
            done = subprocess.run(
                [st, "run", f"{base}/openapi.json", "--url", base,
                 "-H", f"Authorization: Bearer {key}", "--checks", CHECKS,
                 "--max-examples", str(args.max_examples), "--max-time", str(args.max_time),
                 "--seed", str(args.seed), "--workers", str(args.workers),
                 "--request-timeout", "10", "--max-response-time", "5",
                 "--generation-allow-x00", "true", "--output-sanitize", "true",
                 "--suppress-health-check", "all", *args.st_args],
                check=False,
                cwd=folder,  # st keeps its state in ./.schemathesis: not in the repository
            )  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=15)
            log.close()
        output = (Path(folder) / "server.log").read_text(errors="replace")
    if "Traceback" in output:
        print(output[-4000:], file=sys.stderr)
        print("the server logged a traceback", file=sys.stderr)
        return 1
    if key in output:
        print("the server logged the key", file=sys.stderr)
        return 1
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
