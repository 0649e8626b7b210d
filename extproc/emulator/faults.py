"""Per-request fault injection, driven by `x-emulator-*` request headers.

Tests send these through the gateway (the SDK's `extra_headers`), so one emulator
can serve well-behaved and misbehaving requests side by side.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Mapping

from .errors import AzureError, unauthorized

STATUS_HEADER = "x-emulator-status"
RETRY_AFTER_HEADER = "x-emulator-retry-after"
DELAY_HEADER = "x-emulator-delay-ms"
CHUNK_INTERVAL_HEADER = "x-emulator-chunk-interval-ms"
CHUNKS_HEADER = "x-emulator-chunks"

DEFAULT_CHUNKS = 5
DEFAULT_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class FaultPlan:
    status: int | None = None  # fail the request with Azure's error for this status
    retry_after_s: int | None = None  # explicit Retry-After, also honoured on non-429 statuses
    delay_s: float = 0.0  # before the response headers
    chunk_interval_s: float = 0.0  # between streamed events
    chunks: int = DEFAULT_CHUNKS  # content pieces in a stream

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], default_chunk_interval_s: float) -> FaultPlan:
        status = _int(headers.get(STATUS_HEADER))
        interval_ms = _int(headers.get(CHUNK_INTERVAL_HEADER))
        return cls(
            status=status if status is not None and 400 <= status <= 599 else None,
            retry_after_s=_int(headers.get(RETRY_AFTER_HEADER)),
            delay_s=max(_int(headers.get(DELAY_HEADER)) or 0, 0) / 1000,
            chunk_interval_s=default_chunk_interval_s if interval_ms is None else max(interval_ms, 0) / 1000,
            chunks=max(_int(headers.get(CHUNKS_HEADER)) or DEFAULT_CHUNKS, 1),
        )

    async def apply(self, operation: str, api_version: str) -> None:
        """Wait, then fail if asked to; called once the request is known to be valid."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status is not None:
            raise injected_error(self.status, operation, api_version, self.retry_after_s)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # a malformed header means "no fault", not a broken request


def injected_error(status: int, operation: str, api_version: str, retry_after_s: int | None) -> AzureError:
    seconds = DEFAULT_RETRY_AFTER_S if retry_after_s is None else max(retry_after_s, 0)
    headers: dict[str, str] = {}
    if status == 429 or retry_after_s is not None:
        # The openai SDK prefers retry-after-ms; Azure sends both.
        headers = {"Retry-After": str(seconds), "retry-after-ms": str(seconds * 1000)}
    return AzureError(status, _error_body(status, operation, api_version, seconds), headers)


def _error_body(status: int, operation: str, api_version: str, retry_after_s: int) -> dict[str, object]:
    if status == 429:
        unit = "second" if retry_after_s == 1 else "seconds"
        return {
            "code": "429",
            "message": (
                f"Requests to the {operation} Operation under Azure OpenAI API version {api_version} have "
                "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
                f"{retry_after_s} {unit}. Please go here: https://aka.ms/oai/quotaincrease if you would "
                "like to further increase the default rate limit."
            ),
        }
    if status == 401:
        return unauthorized().error
    if status == 500:
        return {
            "message": (
                "The server had an error while processing your request. Sorry about that! You can retry "
                "your request, or contact us through an Azure support request at: "
                "https://go.microsoft.com/fwlink/?linkid=2213926 if the error persists."
            ),
            "type": "server_error",
            "param": None,
            "code": None,
        }
    return {"code": _CODES.get(status, str(status)), "message": _MESSAGES.get(status, "The request failed.")}


_CODES = {
    400: "BadRequest",
    403: "Forbidden",
    404: "404",
    408: "Timeout",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    424: "FailedDependency",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_MESSAGES = {
    400: "The request was invalid.",
    403: "Access to this resource is forbidden.",
    404: "Resource not found",
    408: "The operation was timeout.",
    409: "The request conflicts with the current state of the resource.",
    413: "The request entity is too large.",
    415: "The media type of the request is not supported.",
    424: "The upstream model service failed.",
    502: "Bad gateway.",
    503: "The service is temporarily unable to process your request. Please try again later.",
    504: "The operation timed out.",
}
