"""Every upstream client verifies TLS the same way and says so when it fails (issue 17).

A CA and a server certificate for 127.0.0.1 are made for the module (with
the `cryptography` package); a raw asyncio server serves TLS with them. The
CA is trusted through a provider's `ca_file`, `SSL_CERT_FILE` or
`SSL_CERT_DIR`; without it, a call fails as a certificate failure
("TLS certificate verification failed: ..."), logged once, which the gateway
answers with a 502 `upstream_tls_error`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from axione_asgi.transports import UpstreamClient, UpstreamTLSError, open_upstream
from tests.faults import Witness, fault_config, provider_table, rig, witness
from tests.helpers import assert_spec_error
from tests.test_transport_httptools import JSON_OK, Server, answer, keep_alive, serve

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

__all__ = ["witness"]  # a fixture used here

TRANSPORTS = pytest.mark.parametrize("transport", ["httptools", "aiohttp", "httpx"])
SECRET = "sk-tls-test-secret-0123456789"


@dataclass
class Pki:
    ca: Path  # the CA's certificate (PEM)
    other_ca: Path  # a CA that signed nothing here
    cert: Path  # the server's certificate, signed by `ca`
    key: Path
    hashed_dir: Path | None  # `ca` under its OpenSSL subject hash, for SSL_CERT_DIR

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def _ca(name: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_cert(ca_cert: Any, ca_key: Any) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pytest.importorskip("cryptography", reason="the certificates are made with cryptography")
    from cryptography.hazmat.primitives import serialization

    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _ca("Axione test CA")
    other_cert, _ = _ca("Axione other CA")
    cert, key = _server_cert(ca_cert, ca_key)
    paths = {name: folder / f"{name}.pem" for name in ("ca", "other_ca", "cert", "key")}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["other_ca"].write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    hashed_dir = None
    openssl = shutil.which("openssl")
    if openssl is not None:  # SSL_CERT_DIR finds a CA by its subject hash
        found = subprocess.run(
            [openssl, "x509", "-subject_hash", "-noout", "-in", str(paths["ca"])],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if found.returncode == 0:
            hashed_dir = folder / "hashed"
            hashed_dir.mkdir()
            shutil.copy(paths["ca"], hashed_dir / f"{found.stdout.strip()}.0")
    return Pki(paths["ca"], paths["other_ca"], paths["cert"], paths["key"], hashed_dir)


@pytest.fixture(autouse=True)
def no_cert_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@asynccontextmanager
async def tls_server(pki: Pki, body: bytes = JSON_OK) -> AsyncIterator[Server]:
    async with serve(keep_alive(lambda _: answer(body=body)), tls=pki.server_context()) as srv:
        yield srv


@asynccontextmanager
async def client(
    transport: str, url: str, ca_file: str | None = None
) -> AsyncIterator[UpstreamClient]:
    options: dict[str, Any] = {} if ca_file is None else {"ca_file": ca_file}
    upstream = open_upstream(
        transport,
        base_url=url,
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout_s=5.0,
        connect_timeout_s=5.0,
        max_connections=4,
        **options,
    )
    try:
        yield upstream
    finally:
        await upstream.aclose()


def tls_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "TLS certificate verification failed" in r.getMessage()
    ]


# -- each client ---------------------------------------------------------------


@TRANSPORTS
async def test_an_unknown_ca_is_a_tls_error_saying_so_and_logged_once(
    pki: Pki, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with tls_server(pki) as srv, client(transport, srv.url) as up:
        for _ in range(3):
            with pytest.raises(UpstreamTLSError) as caught:
                await up.post("/v1/chat/completions", b"{}")
            # Before: an UpstreamConnectError named "SSLCertVerificationError" (or
            # "ClientConnectorCertificateError", "ConnectError"), nothing logged.
            assert str(caught.value) == (
                "TLS certificate verification failed: unable to get local issuer certificate"
            )
    assert srv.requests == []
    [warning] = tls_warnings(caplog)
    assert f"127.0.0.1:{srv.port}" in warning
    assert SECRET not in caplog.text


@TRANSPORTS
async def test_the_providers_ca_file_is_trusted(pki: Pki, transport: str) -> None:
    async with tls_server(pki) as srv, client(transport, srv.url, ca_file=str(pki.ca)) as up:
        first = await up.post("/v1/chat/completions", b"{}")
        async with up.stream("/v1/chat/completions", b"{}") as stream:
            streamed = await stream.read()
    assert (first.status, first.body, streamed) == (200, JSON_OK, JSON_OK)
    assert srv.requests[0].header("Authorization") == f"Bearer {SECRET}"


@TRANSPORTS
async def test_a_ca_file_replaces_the_store_it_does_not_add_to_it(
    pki: Pki, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))  # would trust the server, but
    async with tls_server(pki) as srv, client(transport, srv.url, ca_file=str(pki.other_ca)) as up:
        with pytest.raises(UpstreamTLSError, match="TLS certificate verification failed"):
            await up.post("/v1/chat/completions", b"{}")


@TRANSPORTS
async def test_ssl_cert_file_is_trusted(
    pki: Pki, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    async with tls_server(pki) as srv, client(transport, srv.url) as up:
        assert (await up.post("/v1/chat/completions", b"{}")).body == JSON_OK


@TRANSPORTS
async def test_ssl_cert_dir_is_trusted(
    pki: Pki, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if pki.hashed_dir is None:  # pragma: no cover
        pytest.skip("the openssl command is needed to name a CA by its hash")
    monkeypatch.setenv("SSL_CERT_DIR", str(pki.hashed_dir))
    async with tls_server(pki) as srv, client(transport, srv.url) as up:
        # Before: the httptools client ignored SSL_CERT_DIR (certifi's bundle only).
        assert (await up.post("/v1/chat/completions", b"{}")).body == JSON_OK


@TRANSPORTS
async def test_a_ca_file_that_holds_no_certificate_is_a_tls_error(
    pki: Pki, transport: str, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    async with tls_server(pki) as srv:
        with pytest.raises(UpstreamTLSError, match="holds no usable CA certificate"):
            async with client(transport, srv.url, ca_file=str(garbage)) as up:
                await up.post("/v1/chat/completions", b"{}")


def test_a_ca_file_that_does_not_exist_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        open_upstream(
            "httptools",
            base_url="https://127.0.0.1:1",
            headers={},
            timeout_s=1.0,
            connect_timeout_s=1.0,
            max_connections=1,
            ca_file=str(tmp_path / "missing.pem"),
        )


# -- through the gateway -------------------------------------------------------

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-tls",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "over TLS"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
).encode()


@TRANSPORTS
async def test_the_gateway_answers_an_unverified_upstream_with_a_502_upstream_tls_error(
    pki: Pki, transport: str, witness: Witness
) -> None:
    async with tls_server(pki, COMPLETION) as srv:
        providers = {
            "primary": provider_table(f"{srv.url}/v1", {"gpt-4o": "gpt-4o"}, transport=transport)
        }
        async with rig(fault_config(providers, max_retries=2), witness) as r:
            for _ in range(2):
                error = assert_spec_error(await r.chat(), 502, "upstream_tls_error")
                # Before: 503 provider_unavailable, "could not be reached".
                assert "TLS certificate verification failed" in error["message"]
    assert len(tls_warnings(witness.caplog)) == 1


@TRANSPORTS
async def test_the_gateway_reaches_an_upstream_whose_ca_file_is_configured(
    pki: Pki, transport: str, witness: Witness
) -> None:
    async with tls_server(pki, COMPLETION) as srv:
        table = provider_table(
            f"{srv.url}/v1", {"gpt-4o": "gpt-4o"}, transport=transport, ca_file=str(pki.ca)
        )
        async with rig(fault_config({"primary": table}), witness) as r:
            response = await r.chat()
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "over TLS"
