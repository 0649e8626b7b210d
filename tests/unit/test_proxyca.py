"""The forward proxy's certificates (extproc/envoy_config/proxyca.py), checked with real TLS handshakes in
Python's ssl (OpenSSL): a client trusting the bundle accepts the leaf for the intercepted hosts; the CA's
NameConstraints make a certificate it signed for any other name fail verification; an operator's CA works."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from extproc.envoy_config.devtls import make_ca, pem_key
from extproc.envoy_config.proxyca import _make_ca, _make_leaf, ensure_proxy_certificates, system_roots

HOSTS = ["api.openai.com"]


def handshake(server_cert: Path, server_key: Path, trust: Path, server_name: str) -> None:
    """A TLS handshake in memory: a server with this certificate, a client that trusts `trust` and asks for
    `server_name`. Raises ssl.SSLCertVerificationError when the client refuses the certificate."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server_cert, server_key)
    client_context = ssl.create_default_context(cafile=str(trust))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, tls, out, peer_in in (("client", client, c_out, s_in), ("server", server, s_out, c_in)):
            if not done[side]:
                try:
                    tls.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_a_client_trusting_the_bundle_accepts_the_intercepted_hosts(tmp_path: Path) -> None:
    certs = ensure_proxy_certificates(tmp_path, ["api.openai.com", "api.openai.com"])
    handshake(certs.leaf_cert, certs.leaf_key, certs.bundle, "api.openai.com")
    handshake(certs.leaf_cert, certs.leaf_key, certs.ca_cert, "api.openai.com")
    with pytest.raises(ssl.SSLCertVerificationError):  # the leaf is for its hosts only
        handshake(certs.leaf_cert, certs.leaf_key, certs.bundle, "example.com")
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600 and certs.leaf_key.stat().st_mode & 0o777 == 0o600
    roots = system_roots()
    assert roots and certs.bundle.read_bytes().startswith(roots.rstrip(b"\n"))  # the system's roots, then the CA
    assert certs.bundle.read_bytes().endswith(certs.ca_cert.read_bytes())


def test_the_ca_can_sign_for_no_other_name(tmp_path: Path) -> None:
    """A leaked CA key is no use elsewhere: what it signs for another name fails verification."""
    certs = ensure_proxy_certificates(tmp_path, HOSTS)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical and [n.value for n in constraints.value.permitted_subtrees] == HOSTS
    assert [n.value for n in constraints.value.excluded_subtrees] == [".api.openai.com"]  # not its subdomains
    ca_key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), password=None)
    now = dt.datetime.now(dt.timezone.utc)
    for forged_name in ("www.example.com", "evil.api.openai.com"):
        key, forged = _make_leaf(ca_key, ca, [forged_name], now)  # type: ignore[arg-type]
        (tmp_path / "forged.crt").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
        (tmp_path / "forged.key").write_bytes(pem_key(key))
        with pytest.raises(ssl.SSLCertVerificationError, match="(?i)name constraint|permitted|subtree"):
            handshake(tmp_path / "forged.crt", tmp_path / "forged.key", certs.bundle, forged_name)


def test_certificates_are_kept_and_made_again_when_the_hosts_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = ensure_proxy_certificates(tmp_path, HOSTS)
    ca, leaf = first.ca_cert.read_bytes(), first.leaf_cert.read_bytes()
    again = ensure_proxy_certificates(tmp_path, HOSTS)
    assert again.ca_cert.read_bytes() == ca and again.leaf_cert.read_bytes() == leaf  # trusted once, kept
    more = ensure_proxy_certificates(tmp_path, [*HOSTS, "api.anthropic.example"])
    assert more.ca_cert.read_bytes() != ca  # its constraints no longer fit: a new CA, said in the log
    assert "made again" in caplog.text
    handshake(more.leaf_cert, more.leaf_key, more.bundle, "api.anthropic.example")
    handshake(more.leaf_cert, more.leaf_key, more.bundle, "api.openai.com")


def test_an_operators_ca_signs_the_leaf_instead(tmp_path: Path) -> None:
    key, ca = _make_ca(HOSTS, dt.datetime.now(dt.timezone.utc))
    ca_file, key_file = tmp_path / "operator-ca.crt", tmp_path / "operator-ca.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(pem_key(key))
    certs = ensure_proxy_certificates(tmp_path / "state", HOSTS, ca_file, key_file)
    assert certs.ca_cert.read_bytes() == ca_file.read_bytes()
    assert not (tmp_path / "state" / "ca.key").exists()  # the operator's key is not copied
    handshake(certs.leaf_cert, certs.leaf_key, ca_file, "api.openai.com")
    other = ec.generate_private_key(ec.SECP256R1())
    key_file.write_bytes(pem_key(other))
    with pytest.raises(ValueError, match="is not the key of"):
        ensure_proxy_certificates(tmp_path / "state", HOSTS, ca_file, key_file)


def test_a_leaf_from_another_ca_is_replaced(tmp_path: Path) -> None:
    certs = ensure_proxy_certificates(tmp_path, HOSTS)
    stranger_key, stranger = _make_ca(HOSTS, dt.datetime.now(dt.timezone.utc))
    _key, leaf = _make_leaf(stranger_key, stranger, HOSTS, dt.datetime.now(dt.timezone.utc))
    certs.leaf_cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))  # same subject names, other CA
    ensure_proxy_certificates(tmp_path, HOSTS)
    handshake(certs.leaf_cert, certs.leaf_key, certs.ca_cert, "api.openai.com")


def _operator_ca(tmp_path: Path, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> tuple[Path, Path]:
    ca_file, key_file = tmp_path / "operator-ca.crt", tmp_path / "operator-ca.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(pem_key(key))
    return ca_file, key_file


def _constrained(permitted: list[str] | None, excluded: list[str] | None) -> tuple[x509.ExtensionType, bool]:
    return x509.NameConstraints(permitted_subtrees=[x509.DNSName(n) for n in permitted] if permitted else None,
                                excluded_subtrees=[x509.DNSName(n) for n in excluded] if excluded else None), True


@pytest.mark.parametrize(("permitted", "excluded", "refused"), [
    (["api.openai.com"], None, "api.example.org"),  # one name of two
    (["openai.com"], [".openai.com"], "api.example.org, api.openai.com"),  # subdomains excluded
    (["example.org", "openai.com"], ["api.example.org"], "api.example.org"),
    ([".openai.com", ".example.org"], None, None),  # subdomains only: both hosts are subdomains
    (["openai.com", "example.org"], ["chat.openai.com"], None),
])
def test_an_operators_ca_must_permit_every_host(tmp_path: Path, permitted: list[str] | None, excluded: list[str] | None,
                                                 refused: str | None) -> None:
    """A CA whose constraints leave a host out is refused at start (clients would refuse its certificate: the
    handshake shows it), one that permits them all signs the leaf."""
    hosts = ["api.openai.com", "api.example.org"]
    now = dt.datetime.now(dt.timezone.utc)
    ca_file, key_file = _operator_ca(tmp_path, *make_ca("operator", now, (_constrained(permitted, excluded),)))
    if refused is None:
        certs = ensure_proxy_certificates(tmp_path / "state", hosts, ca_file, key_file)
        for host in hosts:
            handshake(certs.leaf_cert, certs.leaf_key, ca_file, host)
        return
    with pytest.raises(ValueError, match="do not permit " + refused):
        ensure_proxy_certificates(tmp_path / "state", hosts, ca_file, key_file)
    # What clients would have done with it: the same leaf, signed without the check, refused.
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    leaf_key, leaf = _make_leaf(key, ca, hosts, now)  # type: ignore[arg-type]
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(pem_key(leaf_key))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path / "leaf.crt", tmp_path / "leaf.key", ca_file, refused.split(", ")[-1])


def test_an_operators_certificate_that_is_no_ca_or_expired_is_refused(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    key, ca = make_ca("operator", now - dt.timedelta(days=20 * 365))  # expired long ago
    with pytest.raises(ValueError, match="is not valid now"):
        ensure_proxy_certificates(tmp_path / "state", HOSTS, *_operator_ca(tmp_path, key, ca))
    key, _ca = make_ca("operator", now)
    _leaf_key, leaf = _make_leaf(key, _ca, HOSTS, now)
    with pytest.raises(ValueError, match="is not a CA"):
        ensure_proxy_certificates(tmp_path / "state", HOSTS, *_operator_ca(tmp_path, _leaf_key, leaf))
    # No name constraints: works (it is the operator's CA), with a warning.
    certs = ensure_proxy_certificates(tmp_path / "state", HOSTS, *_operator_ca(tmp_path, key, _ca))
    handshake(certs.leaf_cert, certs.leaf_key, tmp_path / "operator-ca.crt", "api.openai.com")
    assert "carries no name constraints" in caplog.text


def test_an_operators_ca_that_may_not_sign_is_refused(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "no keyCertSign")])
    ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, False, True, False, False), critical=True)
          .sign(key, hashes.SHA256()))
    ca_file, key_file = _operator_ca(tmp_path, key, ca)
    with pytest.raises(ValueError, match="lacks keyCertSign"):
        ensure_proxy_certificates(tmp_path / "state", HOSTS, ca_file, key_file)
    leaf_key, leaf = _make_leaf(key, ca, HOSTS, now)  # what clients would have got: refused
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(pem_key(leaf_key))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path / "leaf.crt", tmp_path / "leaf.key", ca_file, "api.openai.com")


def test_constraints_on_other_name_types_leave_dns_names_free(tmp_path: Path) -> None:
    """Name constraints hold per type: a CA permitting only an IP range constrains no DNS name (OpenSSL agrees)."""
    now = dt.datetime.now(dt.timezone.utc)
    only_ips = x509.NameConstraints(permitted_subtrees=[x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))],
                                    excluded_subtrees=None), True
    ca_file, key_file = _operator_ca(tmp_path, *make_ca("operator", now, (only_ips,)))
    certs = ensure_proxy_certificates(tmp_path / "state", HOSTS, ca_file, key_file)
    handshake(certs.leaf_cert, certs.leaf_key, ca_file, "api.openai.com")
