"""deploy/systemd: `systemd-analyze verify` (in a scratch root holding the installed layout, so the
executables it checks exist) with no warnings, an exposure level from `systemd-analyze security`,
and the two units agreeing with each other and with the config they ship."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from .flavours import (
    SYSTEMD_CONFIG,
    SYSTEMD_ENVOY,
    SYSTEMD_EXTPROC,
    parse_unit,
    systemd_flavour,
    unit_values,
    with_forward_proxy,
)
from .helpers import SYSTEMD, require_tool

UNITS = (SYSTEMD_EXTPROC, SYSTEMD_ENVOY)
MAX_EXPOSURE = 20  # systemd-analyze security's scale is 0-100 (printed as 0.0-10.0); "OK" is below 4.0
SANDBOXING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateUsers": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
}


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the units installed, systemd's own units, and stand-ins for the executables."""
    root = tmp_path_factory.mktemp("systemd-root")
    for unit in UNITS:
        target = root / "etc/systemd/system" / unit.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(unit, target)
        for key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop"):
            for line in unit_values(unit, key):
                executable = root / shlex.split(line)[0].lstrip("-@+!:").lstrip("/")
                executable.parent.mkdir(parents=True, exist_ok=True)
                executable.write_text("#!/bin/sh\n")
                executable.chmod(0o755)
    for system_units in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if system_units.is_dir():
            shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
            break
    return root


def test_units_verify_without_warnings(scratch_root: Path) -> None:
    analyze = require_tool("systemd-analyze", "the Debian package systemd")
    units = [str(scratch_root / "etc/systemd/system" / unit.name) for unit in UNITS]
    result = subprocess.run([analyze, "verify", f"--root={scratch_root}", *units],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_are_sandboxed(unit: Path, scratch_root: Path) -> None:
    analyze = require_tool("systemd-analyze", "the Debian package systemd")
    installed = scratch_root / "etc/systemd/system" / unit.name
    result = subprocess.run(
        [analyze, "security", "--offline=yes", f"--root={scratch_root}", f"--threshold={MAX_EXPOSURE}",
         "--no-pager", str(installed)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    settings = {key: value for section, key, value in parse_unit(unit) if section == "Service"}
    for key, value in SANDBOXING.items():
        assert settings.get(key) == value, f"{unit.name}: {key}={settings.get(key)!r}, expected {value!r}"
    assert settings["Restart"] == "on-failure"
    assert settings["User"] == "aoai-gateway"


def test_units_work_together() -> None:
    envoy = {key: value for _, key, value in parse_unit(SYSTEMD_ENVOY)}
    extproc_unit = SYSTEMD_EXTPROC.name
    assert envoy["Requires"] == envoy["PartOf"] == extproc_unit
    assert extproc_unit in envoy["After"].split()
    # Same user: Envoy reads the 0600 development key and the 0660 sockets the ext_proc writes.
    assert unit_values(SYSTEMD_ENVOY, "User") == unit_values(SYSTEMD_EXTPROC, "User")
    sysusers = (SYSTEMD / "aoai-gateway.sysusers").read_text()
    assert any(line.split()[:2] == ["u", "aoai-gateway"] for line in sysusers.splitlines())
    # The ext_proc is "started" only once it answers gRPC health, which is what After= waits for.
    (post,) = unit_values(SYSTEMD_EXTPROC, "ExecStartPost")
    assert "-m extproc health" in post
    assert unit_values(SYSTEMD_EXTPROC, "EnvironmentFile") == ["/etc/aoai-gateway/aoai-gateway.env"]
    flavour = systemd_flavour()
    assert flavour.envoy_config_path == flavour.rendered_path
    settings = flavour.container_settings()
    assert str(settings.socket_dir) == "/run/" + unit_values(SYSTEMD_EXTPROC, "RuntimeDirectory")[0]
    assert str(settings.state_path) == "/var/lib/" + unit_values(SYSTEMD_EXTPROC, "StateDirectory")[0]


def test_forward_proxy_example_hands_out_the_bundle() -> None:
    """config.yaml's commented forward_proxy section, turned on: the CA lands in the StateDirectory, which only the
    service's user reads (so the comments have apps given a world-readable copy of the bundle), and the proxy and
    bundle the comments give apps are the gateway's (test_envoy_configs.py renders and validates it)."""
    settings = with_forward_proxy(systemd_flavour(), "systemd+forward-proxy").container_settings()
    assert settings.forward_proxy.enabled
    (state,) = unit_values(SYSTEMD_EXTPROC, "StateDirectory")
    assert settings.forward_proxy_dir.parent == settings.state_path == Path("/var/lib") / state
    assert unit_values(SYSTEMD_EXTPROC, "StateDirectoryMode") == ["0750"] and unit_values(SYSTEMD_EXTPROC, "UMask") == ["0027"]
    text = SYSTEMD_CONFIG.read_text()
    ((source, copy),) = re.findall(r"install -m 0644 (\S+) (\S+)", text)
    assert source == str(settings.forward_proxy_dir / "bundle.pem")
    assert f"SSL_CERT_FILE={copy} " in text
    assert re.search(rf"HTTPS_PROXY=http://{re.escape(settings.listen.address)}:{settings.listen.http_port}\b", text)

