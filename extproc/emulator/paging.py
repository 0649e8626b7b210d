"""Cursor pagination (`limit`, `after`, `order`) as the OpenAI list endpoints do it."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .errors import invalid_request


def paginate(
    items: Sequence[dict[str, Any]],
    query: Mapping[str, str],
    default_order: str = "desc",
    default_limit: int = 20,
    max_limit: int = 10_000,
) -> dict[str, Any]:
    """`items` are in creation order; returns an OpenAI list object of one page."""
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise invalid_request(f"Invalid 'order': {order!r}.", param="order")
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        raise invalid_request("Invalid 'limit': expected an integer.", param="limit") from None
    if not 1 <= limit <= max_limit:
        raise invalid_request(f"Invalid 'limit': expected 1..{max_limit}.", param="limit")
    ordered = list(items) if order == "asc" else list(reversed(items))
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > limit,
    }
