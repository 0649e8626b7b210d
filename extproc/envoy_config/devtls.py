"""A local development CA and server certificate for the HTTPS listener, made on first start.

Only used when no certificate is configured. The CA's key never leaves the state directory; the
CA certificate's path is printed so clients can trust it (e.g. SSL_CERT_FILE for the openai SDK).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)  # the most browsers and Apple platforms accept
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class DevCertificates:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aoai-gateway development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str, now: dt.datetime,
            extensions: tuple[tuple[x509.ExtensionType, bool], ...] = ()) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that signs only end certificates (path length 0), with `extensions` (value, critical) besides."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return key, builder.sign(key, hashes.SHA256())


def _server_names(extra: tuple[str, ...]) -> list[x509.GeneralName]:
    dns = {"localhost", socket.gethostname(), *extra}
    names: list[x509.GeneralName] = []
    for entry in sorted(dns):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    return names


# What may sign a leaf: the gateway's own CAs are EC; an operator's forward-proxy CA may be RSA.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def make_leaf(ca_key: SigningKey, ca_cert: x509.Certificate, common_name: str, names: list[x509.GeneralName],
              now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for `names` (its SANs) signed by the CA, valid no longer than the CA is."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _still_valid(path: Path, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > now


def ensure_dev_certificates(directory: Path, extra_names: tuple[str, ...] = ()) -> DevCertificates:
    """Reuse the CA and server certificate in `directory`, creating or renewing them as needed."""
    now = dt.datetime.now(dt.timezone.utc)
    paths = DevCertificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca_key_path = directory / "ca.key"
    if _still_valid(paths.ca_cert, now) and ca_key_path.is_file():
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca_key, ca_cert = make_ca("aoai-gateway local development CA", now)
        write_private(ca_key_path, pem_key(ca_key))
        paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        paths.server_cert.unlink(missing_ok=True)  # issued by the old CA
    if not (_still_valid(paths.server_cert, now) and paths.server_key.is_file()):
        key, cert = make_leaf(ca_key, ca_cert, "localhost", _server_names(extra_names), now)
        write_private(paths.server_key, pem_key(key))
        paths.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths
