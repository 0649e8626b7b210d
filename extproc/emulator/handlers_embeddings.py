"""POST .../embeddings: deterministic unit vectors, as floats or base64 float32."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from typing import Any

from aiohttp import web

from . import text
from .context import Call, Deployment
from .errors import invalid_request
from .jsonio import json_response
from .validation import require


def _inputs(value: Any) -> list[str]:
    """A string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(token, int) for token in value):
            return [" ".join(map(str, value))]
        if all(isinstance(item, str) for item in value):
            return list(value)
        if all(isinstance(item, list) and all(isinstance(t, int) for t in item) for item in value):
            return [" ".join(map(str, item)) for item in value]
    raise invalid_request(f"{value!r} is not valid under any of the given schemas - 'input'", param="input")


def vector(seed_text: str, dimensions: int) -> list[float]:
    """The same text always embeds to the same unit vector (float32-exact values)."""
    rng = random.Random(hashlib.sha256(seed_text.encode()).digest())
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(x / norm for x in raw))
    # Round-trip through float32 so the float and base64 encodings decode to equal values.
    return list(struct.unpack(f"<{dimensions}f", packed))


def build_embeddings(body: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    inputs = _inputs(require(body, "input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid_request(
            f"'{encoding}' is not one of ['float', 'base64'] - 'encoding_format'", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = deployment.info.embedding_dimensions
    elif isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= 3072:
        raise invalid_request(f"Invalid 'dimensions': {dimensions!r}.", param="dimensions")
    data = []
    for index, item in enumerate(inputs):
        values = vector(item, dimensions)
        embedding: Any = values
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *values)).decode()
        data.append({"embedding": embedding, "index": index, "object": "embedding"})
    tokens = sum(text.count_tokens(item) for item in inputs)
    return {
        "data": data,
        "model": deployment.model,
        "object": "list",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def create_embeddings(call: Call) -> web.StreamResponse:
    return json_response(build_embeddings(call.json, call.target))
