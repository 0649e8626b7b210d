"""Serving HTTPS with a caller-supplied SSLContext (a throwaway self-signed certificate)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openai import AsyncAzureOpenAI, DefaultAsyncHttpxClient

from extproc.emulator import EmulatorSettings, start_emulator

from .conftest import API_KEY, API_VERSION


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "emulator test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_serves_tls(tmp_path: Path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(cert_path))

    async with await start_emulator(EmulatorSettings(ssl_context=server_context)) as emu:
        assert emu.url == f"https://127.0.0.1:{emu.port}"
        async with httpx.AsyncClient(base_url=emu.url, verify=client_context) as http:
            response = await http.post(
                "/openai/deployments/gpt-4o/chat/completions",
                params={"api-version": API_VERSION},
                headers={"api-key": API_KEY},
                json={"messages": [{"role": "user", "content": "secure"}]},
            )
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "Echo: secure"

        # The SDK over TLS, streaming included.
        http_client = DefaultAsyncHttpxClient(verify=client_context)
        async with AsyncAzureOpenAI(
            azure_endpoint=emu.url, api_key=API_KEY, api_version=API_VERSION, http_client=http_client
        ) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "tls stream"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Echo: tls stream"
        assert len(emu.journal) == 2
