"""Identifiers shaped like the ones Azure OpenAI hands out."""

from __future__ import annotations

import secrets
import string
import uuid

_ALPHANUMERIC = string.ascii_letters + string.digits

# Azure pins one fingerprint per model deployment; a constant is realistic enough.
SYSTEM_FINGERPRINT = "fp_ee1d74bde0"


def alphanumeric_id(prefix: str, length: int = 29) -> str:
    """`chatcmpl-AbC...`, `cmpl-...`: OpenAI-style random suffixes."""
    return prefix + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def hex_id(prefix: str, length: int = 32) -> str:
    """`resp_<hex>`, `file-<hex>`, `batch_<uuid-ish>`."""
    return prefix + secrets.token_hex((length + 1) // 2)[:length]


def request_id() -> str:
    return str(uuid.uuid4())
