"""Batches: create, list, retrieve, cancel.

A batch advances one step each time it is observed (retrieve or list): `validating`
becomes `completed` (or `failed`), `cancelling` becomes `cancelled`. That keeps tests
deterministic: create-then-cancel always cancels, create-then-poll always completes.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from .batch_runner import ENDPOINTS, InvalidInput, normalise_endpoint, run_batch
from .context import Call
from .errors import invalid_request
from .handlers_files import add_file
from .ids import hex_id
from .jsonio import json_response
from .paging import paginate
from .state import EmulatorState
from .validation import require

COMPLETION_WINDOWS = ("24h",)
_TERMINAL = ("completed", "failed", "expired", "cancelled")


async def create_batch(call: Call) -> web.StreamResponse:
    body = call.json
    input_file_id = require(body, "input_file_id")
    endpoint = require(body, "endpoint")
    window = require(body, "completion_window")
    if normalise_endpoint(str(endpoint)) not in ENDPOINTS:
        raise invalid_request(f"'{endpoint}' is not a supported batch endpoint.", param="endpoint")
    if window not in COMPLETION_WINDOWS:
        raise invalid_request(
            f"'{window}' is not one of {list(COMPLETION_WINDOWS)} - 'completion_window'", param="completion_window"
        )
    if input_file_id not in call.state.files:
        raise invalid_request(f"File with id '{input_file_id}' was not found.", param="input_file_id")
    now = int(time.time())
    batch: dict[str, Any] = {
        "id": hex_id("batch_"),
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + 24 * 3600,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }
    call.state.batches[batch["id"]] = batch
    return json_response(batch)


def _advance(state: EmulatorState, batch: dict[str, Any]) -> None:
    now = int(time.time())
    if batch["status"] == "cancelling":
        batch.update(status="cancelled", cancelled_at=now)
    if batch["status"] != "validating":
        return
    data = state.files[batch["input_file_id"]].data if batch["input_file_id"] in state.files else b""
    try:
        result = run_batch(state, normalise_endpoint(batch["endpoint"]), data)
    except InvalidInput as error:
        failure = {"code": "invalid_request", "message": str(error), "param": None, "line": error.line}
        batch.update(status="failed", failed_at=now, errors={"object": "list", "data": [failure]})
        return
    for kind, lines in (("output", result.outputs), ("error", result.errors)):
        if lines:
            jsonl = b"".join(orjson.dumps(line) + b"\n" for line in lines)
            batch[f"{kind}_file_id"] = add_file(state, "batch_output", f"{batch['id']}_{kind}.jsonl", jsonl)["id"]
    total = len(result.outputs) + len(result.errors)
    batch.update(
        status="completed",
        in_progress_at=now,
        finalizing_at=now,
        completed_at=now,
        request_counts={"total": total, "completed": len(result.outputs), "failed": len(result.errors)},
    )


def _observed(call: Call) -> dict[str, Any]:
    return call.stored("batch_id", call.state.batches, "Batch with id '{id}' was not found.")


async def get_batch(call: Call) -> web.StreamResponse:
    batch = _observed(call)
    _advance(call.state, batch)
    return json_response(batch)


async def list_batches(call: Call) -> web.StreamResponse:
    for batch in call.state.batches.values():
        _advance(call.state, batch)
    batches = list(call.state.batches.values())
    return json_response(paginate(batches, call.request.query, default_limit=20, max_limit=100))


async def cancel_batch(call: Call) -> web.StreamResponse:
    batch = _observed(call)
    if batch["status"] in _TERMINAL or batch["status"] == "cancelling":
        raise invalid_request(f"Cannot cancel a batch with status '{batch['status']}'.", param=None)
    batch.update(status="cancelling", cancelling_at=int(time.time()))
    return json_response(batch)
