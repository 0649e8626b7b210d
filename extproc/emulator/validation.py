"""Field checks that produce the same 400s Azure's model service sends."""

from __future__ import annotations

from typing import Any

from .errors import invalid_request, missing_field


def require(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is None:
        raise missing_field(name)
    return value


def optional_int(body: dict[str, Any], name: str, minimum: int, maximum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request(f"{value!r} is not of type 'integer' - '{name}'", param=name)
    if not minimum <= value <= maximum:
        raise invalid_request(
            f"Invalid '{name}': integer out of range; expected {minimum}..{maximum}, got {value}.", param=name
        )
    return value


def flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool) and value is not None:
        raise invalid_request(f"{value!r} is not of type 'boolean' - '{name}'", param=name)
    return bool(value)
