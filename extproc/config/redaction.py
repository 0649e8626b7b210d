"""The effective configuration with secrets replaced, for `python -m extproc config`."""

from __future__ import annotations

from typing import Any

from ..core.catalogue import ENDPOINT_NAMES
from .schema import Settings

REDACTED = "<redacted>"


def redacted_dump(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    key = settings.azure.resolved_api_key()
    data["azure"]["api_key"] = REDACTED if key else None
    for name, backend in settings.backends.items():
        data["backends"][name]["api_key"] = REDACTED if backend.api_key else None
    for entry in data["clients"]["keys"]:  # not a secret, but no part of a key's trace is shown
        entry["key_sha256"] = REDACTED
    data["effective"] = {
        "api_key_source": (
            "azure.api_key_file (re-read when it changes)"
            if settings.azure.api_key_file
            else "azure.api_key / AZURE_OPENAI_API_KEY"
            if settings.azure.api_key
            else "none: the client's Bearer token is forwarded as api-key"
        ),
        "backends": {name: backend.endpoint for name, backend in settings.all_backends.items()},
        "pools": {
            model: [f"{m.backend}/{m.deployment} (priority {m.priority}, weight {m.weight})" for m in members]
            for model, members in settings.pools.items()
        },
        "api_versions": {name: settings.api_version_for(name) for name in ENDPOINT_NAMES},
        "extproc_sockets": [str(p) for p in settings.socket_paths()],
    }
    return data
