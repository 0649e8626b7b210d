"""The forward-proxy mode's certificates (issue 16, first step): a CA of the gateway's own that may only sign for
the intercepted hosts, and the certificate Envoy shows inside a CONNECT tunnel for them.

The CA is made on first use unless the operator gives one. It carries X.509 NameConstraints (critical) that
permit only the intercepted host names: a leaked CA key can't impersonate any other site to a client that trusts
it. Clients get a bundle (the system's roots + this CA) for SSL_CERT_FILE / REQUESTS_CA_BUNDLE, since
SSL_CERT_FILE replaces the system trust store rather than adding to it.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .devtls import RENEW_BEFORE, SigningKey, make_ca, make_leaf, pem_key, write_private

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyCertificates:
    ca_cert: Path
    leaf_cert: Path  # for every intercepted host (one SAN each)
    leaf_key: Path
    bundle: Path  # the system's roots and this CA: what clients trust


def _make_ca(hosts: Sequence[str], now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    # Only these names (RFC 5280 4.2.1.10): a permitted name also permits its subdomains, which the excluded ".name"
    # (OpenSSL: subdomains only) takes back.
    constraints = x509.NameConstraints(permitted_subtrees=[x509.DNSName(host) for host in hosts],
                                       excluded_subtrees=[x509.DNSName("." + host) for host in hosts])
    return make_ca("aoai-gateway forward-proxy CA", now, ((constraints, True),))


def _make_leaf(ca_key: SigningKey, ca_cert: x509.Certificate, hosts: Sequence[str],
               now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return make_leaf(ca_key, ca_cert, hosts[0], [x509.DNSName(host) for host in hosts], now)


def _load(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _dns_constraints(cert: x509.Certificate) -> tuple[list[str], list[str]] | None:
    """The DNS names a CA's NameConstraints permit and exclude; None without the extension."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return ([n.value for n in constraints.permitted_subtrees or [] if isinstance(n, x509.DNSName)],
            [n.value for n in constraints.excluded_subtrees or [] if isinstance(n, x509.DNSName)])


def _permits_exactly(cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    found = _dns_constraints(cert)
    return found is not None and set(found[0]) == set(hosts) and set(found[1]) == {"." + host for host in hosts}


def _check_operator_ca(cert: x509.Certificate, path: Path, hosts: Sequence[str], now: dt.datetime) -> None:
    """An operator's CA that clients would refuse for an intercepted host is refused at start (else the gateway
    runs and every tunnelled request fails its TLS check): not a CA, expired, or name constraints leaving a host
    out. One without name constraints works, with a warning."""
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError(f"{path} is not a CA certificate (BasicConstraints CA:TRUE)")
    try:
        signs = cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        signs = True  # no KeyUsage: any use
    if not signs:
        raise ValueError(f"{path} may not sign certificates (its KeyUsage lacks keyCertSign)")
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise ValueError(f"{path} is not valid now (from {cert.not_valid_before_utc} to {cert.not_valid_after_utc})")
    found = _dns_constraints(cert)
    if found is None:
        log.warning("%s carries no name constraints: its key can sign for any site (a name-constrained CA, like "
                    "the one the gateway makes, cannot)", path)
        return
    permitted, excluded = found
    # Constraints hold per name type: with no DNS name permitted (only IPs, say), DNS names are not constrained.
    refused = [host for host in hosts if (permitted and not any(_in_subtree(host, name) for name in permitted))
               or any(_in_subtree(host, name) for name in excluded)]
    if refused:
        raise ValueError(f"{path}'s name constraints do not permit {', '.join(refused)}: clients would refuse the "
                         "certificate for it (forward_proxy.hosts)")


def _in_subtree(host: str, name: str) -> bool:
    """RFC 5280 DNS name constraint matching as OpenSSL does it: `name` covers itself and its subdomains, a
    leading dot (`.example.com`) only the subdomains; an empty name covers every host."""
    name = name.lower()
    if name.startswith("."):
        return host.endswith(name)
    return not name or host == name or host.endswith("." + name)


def _names_of(cert: x509.Certificate) -> list[str]:
    try:
        return sorted(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName))
    except x509.ExtensionNotFound:
        return []


def system_roots() -> bytes:
    """The system's CA bundle as OpenSSL finds it (empty when there is none)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    return b""


def ensure_proxy_certificates(directory: Path, hosts: Sequence[str], ca_cert_file: Path | None = None,
                              ca_key_file: Path | None = None) -> ProxyCertificates:
    """The CA (the operator's, or one made here and kept), a leaf for `hosts` it signed, and the clients' bundle,
    in `directory`; each reused while valid and made again when the hosts, the CA or the time call for it."""
    now = dt.datetime.now(dt.timezone.utc)
    hosts = sorted(dict.fromkeys(hosts))
    paths = ProxyCertificates(directory / "ca.crt", directory / "leaf.crt", directory / "leaf.key",
                              directory / "bundle.pem")
    directory.mkdir(parents=True, exist_ok=True)
    if ca_cert_file is not None and ca_key_file is not None:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_file.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        if not isinstance(loaded, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise ValueError(f"{ca_key_file}: an EC or RSA private key is needed to sign the forward proxy's certificate")
        ca_key: SigningKey = loaded
        if ca_cert.public_key().public_numbers() != ca_key.public_key().public_numbers():
            raise ValueError(f"{ca_key_file} is not the key of {ca_cert_file}")
        _check_operator_ca(ca_cert, ca_cert_file, hosts, now)
        paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        existing = _load(paths.ca_cert)
        key_path = directory / "ca.key"
        if existing is not None and key_path.is_file() and existing.not_valid_after_utc - RENEW_BEFORE > now \
                and _permits_exactly(existing, hosts):
            ca_cert = existing
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            ca_key = loaded
        else:
            if existing is not None:
                log.warning("the forward proxy's CA is made again (the intercepted hosts changed, or it expires): "
                            "clients must trust the new %s", paths.ca_cert)
            ca_key, ca_cert = _make_ca(hosts, now)
            write_private(key_path, pem_key(ca_key))
            paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    leaf = _load(paths.leaf_cert)
    if not (leaf is not None and paths.leaf_key.is_file() and leaf.issuer == ca_cert.subject
            and leaf.not_valid_after_utc - RENEW_BEFORE > now and _names_of(leaf) == hosts
            and _signed_by(leaf, ca_cert)):
        key, cert = _make_leaf(ca_key, ca_cert, hosts, now)
        write_private(paths.leaf_key, pem_key(key))
        paths.leaf_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    roots = system_roots()
    if not roots:
        log.warning("no system CA bundle found: %s holds only the forward proxy's CA", paths.bundle)
    paths.bundle.write_bytes(roots.rstrip(b"\n") + b"\n" + paths.ca_cert.read_bytes() if roots else paths.ca_cert.read_bytes())
    return paths


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
