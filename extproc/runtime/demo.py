"""`up` without an Azure endpoint: the built-in Azure OpenAI emulator stands in for the resource.

The gateway treats it as it would any Azure resource: the model list shown in `/v1/models` (when no
model map is configured) is what the resource itself lists at `GET /openai/v1/models`.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ..config import Settings
from .processes import free_port, port_open

if TYPE_CHECKING:
    from .up import Stack

EMULATOR_KEY = "emulator-key"
EMULATOR_NOTE = "No Azure endpoint configured: using the built-in Azure OpenAI emulator at {endpoint}"


def emulated_settings(settings: Settings, endpoint: str, models: dict[str, str] | None = None) -> Settings:
    """The settings `up` runs with the emulator at `endpoint`: its key is the configured one, else
    EMULATOR_KEY; `models` (the emulator's deployments) stand in for an empty model map."""
    key = settings.azure.resolved_api_key() or EMULATOR_KEY
    azure = settings.azure.model_copy(update={"endpoint": endpoint, "api_key": SecretStr(key), "api_key_file": None})
    return settings.model_copy(update={"azure": azure, "models": settings.models or (models or {})})


def start_emulator_for(settings: Settings, env: dict[str, str], stack: Stack) -> tuple[Settings, dict[str, str]]:
    """Start the emulator, serving (beside its own deployments) every deployment the model map names;
    return the settings and environment the gateway then runs with."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    emulated = emulated_settings(settings, endpoint)
    key = emulated.azure.resolved_api_key() or EMULATOR_KEY
    argv = [sys.executable, "-m", "extproc.emulator", "--host", "127.0.0.1", "--port", str(port), "--api-key", key]
    for name in sorted(set(settings.models.values())):  # beside the emulator's own deployments
        argv += ["--add-deployment", f"{name}={name}"]
    stack.start("emulator", argv, env)
    stack.wait_until(lambda: port_open(port), "the Azure OpenAI emulator")
    print(EMULATOR_NOTE.format(endpoint=endpoint), flush=True)
    env = {**env, "AZURE_OPENAI_ENDPOINT": endpoint, "AZURE_OPENAI_API_KEY": key}
    if not settings.models:
        # With no model map, list the resource's deployments in /v1/models so chat UIs have a choice.
        deployments = _listed_deployments(endpoint, key)
        env["AZURE_OPENAI_MODEL_MAPPER"] = ",".join(f"{name}={name}" for name in deployments)
        emulated = emulated_settings(settings, endpoint, {name: name for name in deployments})
    return emulated, env


def _listed_deployments(endpoint: str, key: str) -> list[str]:
    """The deployments the resource lists on its v1 surface (what v1 clients pass as `model`)."""
    request = urllib.request.Request(f"{endpoint}/openai/v1/models", headers={"api-key": key})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own loopback emulator
            return [entry["id"] for entry in json.load(response)["data"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # URLError and HTTPError are OSErrors
        raise RuntimeError(f"the emulator at {endpoint} did not list its deployments: {exc}") from None
