"""deploy/forward-proxy-ca: the operator's forward-proxy CA, made with openssl (Kubernetes replicas share it through
components/forward-proxy's Secret). It must be the CA the gateway makes itself (extproc/envoy_config/proxyca.py):
the same constraints, the gateway signs its certificate with it, clients trusting its bundle accept that certificate
for each host, and what its key signs for any other name (a subdomain included) is refused."""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from extproc.config.schema import FORWARD_PROXY_HOST
from extproc.envoy_config.devtls import pem_key
from extproc.envoy_config.proxyca import _make_ca, _make_leaf, ensure_proxy_certificates, system_roots
from tests.unit.test_proxyca import handshake

from .flavours import make_forward_proxy_ca
from .helpers import FORWARD_PROXY_CA_SCRIPT

HOSTS = ["api.openai.com", "api.example.org"]


def _extensions(cert: x509.Certificate) -> dict[type, tuple[bool, object]]:
    wanted = (x509.BasicConstraints, x509.KeyUsage, x509.NameConstraints)
    return {type(e.value): (e.critical, e.value) for e in cert.extensions if isinstance(e.value, wanted)}


def test_the_script_makes_the_ca_the_gateway_makes(tmp_path: Path) -> None:
    ca_cert, ca_key, bundle = make_forward_proxy_ca(tmp_path / "ca", HOSTS)
    cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    _key, gateway_ca = _make_ca(sorted(HOSTS), dt.datetime.now(dt.timezone.utc))
    ours, gateways = _extensions(cert), _extensions(gateway_ca)
    assert set(ours) == set(gateways) == {x509.BasicConstraints, x509.KeyUsage, x509.NameConstraints}
    assert ours[x509.BasicConstraints] == gateways[x509.BasicConstraints]  # critical, CA, path length 0
    assert ours[x509.KeyUsage] == gateways[x509.KeyUsage]  # critical, keyCertSign + cRLSign
    for critical, constraints in (ours[x509.NameConstraints], gateways[x509.NameConstraints]):
        assert critical and isinstance(constraints, x509.NameConstraints)  # the same subtrees, in any order
        assert sorted(n.value for n in constraints.permitted_subtrees or []) == sorted(HOSTS)
        assert sorted(n.value for n in constraints.excluded_subtrees or []) == sorted("." + h for h in HOSTS)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= dt.timedelta(days=3649)
    assert ca_key.stat().st_mode & 0o777 == 0o600
    roots = system_roots()
    assert roots and bundle.read_bytes().startswith(roots.rstrip(b"\n"))  # this machine's roots, then the CA
    assert bundle.read_bytes().endswith(ca_cert.read_bytes())
    assert os.access(FORWARD_PROXY_CA_SCRIPT, os.X_OK)


def test_the_gateway_signs_with_it_and_its_key_can_sign_for_nothing_else(tmp_path: Path) -> None:
    ca_cert, ca_key, bundle = make_forward_proxy_ca(tmp_path / "ca", HOSTS)
    certs = ensure_proxy_certificates(tmp_path / "state", HOSTS, ca_cert, ca_key)  # as forward_proxy.ca_cert_file/ca_key_file
    assert certs.ca_cert.read_bytes() == ca_cert.read_bytes()
    for host in HOSTS:
        handshake(certs.leaf_cert, certs.leaf_key, bundle, host)  # the script's bundle, as an app is given it
        handshake(certs.leaf_cert, certs.leaf_key, certs.bundle, host)  # the gateway's, from the same CA
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    for forged_name in ("www.example.com", "evil.api.openai.com", "api.openai.com.example.net"):
        forged_key, forged = _make_leaf(key, ca, [forged_name], dt.datetime.now(dt.timezone.utc))  # type: ignore[arg-type]
        (tmp_path / "forged.crt").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
        (tmp_path / "forged.key").write_bytes(pem_key(forged_key))
        with pytest.raises(ssl.SSLCertVerificationError, match="(?i)name constraint|permitted|subtree"):
            handshake(tmp_path / "forged.crt", tmp_path / "forged.key", bundle, forged_name)


def test_the_script_takes_the_hosts_the_settings_take_and_keeps_an_existing_ca(tmp_path: Path) -> None:
    ca_cert, _key, _bundle = make_forward_proxy_ca(tmp_path / "ca", ["api.openai.com"])
    before = ca_cert.read_bytes()
    result = subprocess.run([str(FORWARD_PROXY_CA_SCRIPT), "-o", str(tmp_path / "ca"), "api.openai.com"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "exists" in result.stderr
    assert ca_cert.read_bytes() == before  # clients already trust it: never overwritten
    for i, host in enumerate(("api.openai.com", "a.b", "x-1.example.co", "API.openai.com", "1.2.3.4", "localhost",
                              "api.openai.com.", "-a.example.com", "a..example.com", "*.openai.com", "api.openai.com:443")):
        accepted = re.match(FORWARD_PROXY_HOST, host) is not None
        result = subprocess.run([str(FORWARD_PROXY_CA_SCRIPT), "-o", str(tmp_path / str(i)), host],
                                capture_output=True, text=True, timeout=60)
        assert (result.returncode == 0) == accepted, (host, result.stderr)
    result = subprocess.run([str(FORWARD_PROXY_CA_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage" in result.stderr
