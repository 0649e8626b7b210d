"""The Responses API: create (plain and streamed), retrieve, delete, list input items."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import text
from .context import Call, Deployment
from .errors import invalid_request
from .ids import hex_id
from .jsonio import json_response
from .paging import paginate
from .sse import SseWriter
from .state import EmulatorState, StoredResponse
from .validation import flag, optional_int, require


def _input_items(value: Any) -> list[dict[str, Any]]:
    """Normalise `input` (a string or a list of items) to stored message items."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid_request(f"{value!r} is not valid under any of the given schemas - 'input'", param="input")
    items = []
    for item in value:
        if not isinstance(item, dict):
            raise invalid_request("Invalid 'input': expected a list of items.", param="input")
        item = dict(item)
        if isinstance(item.get("content"), str):
            part_type = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part_type, "text": item["content"]}]
        item.setdefault("type", "message")
        item.setdefault("id", hex_id("msg_", 48))
        if item["type"] == "message":
            item.setdefault("status", "completed")
        items.append(item)
    return items


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _skeleton(body: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    """A response object with everything but the output (status `in_progress`)."""
    return {
        "id": hex_id("resp_", 48),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": deployment.reported_model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _message(item_id: str, answer: str, status: str) -> dict[str, Any]:
    """The assistant message item; it has no content parts until it is done."""
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": answer}
    content = [] if status == "in_progress" else [part]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


@dataclass(frozen=True)
class ResponsePlan:
    started: dict[str, Any]  # the response as first announced: in progress, no output
    final: dict[str, Any]  # the finished response
    items: list[dict[str, Any]]  # normalised input items, for `input_items`

    @property
    def message(self) -> dict[str, Any]:
        return self.final["output"][0]

    @property
    def output_text(self) -> str:
        return self.message["content"][0]["text"]


def plan_response(state: EmulatorState, body: dict[str, Any], deployment: Deployment) -> ResponsePlan:
    items = _input_items(require(body, "input"))
    previous = body.get("previous_response_id")
    if previous is not None and previous not in state.responses:
        raise invalid_request(f"Previous response with id '{previous}' not found.", param="previous_response_id")
    limit = optional_int(body, "max_output_tokens", 16, 1_000_000)
    started = _skeleton(body, deployment)
    answer, truncated = text.truncate(text.echo(text.last_user_text(items)), limit)
    status = "incomplete" if truncated else "completed"
    input_tokens = sum(text.count_tokens(text.content_text(item.get("content"))) for item in items)
    final = {
        **started,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "output": [_message(hex_id("msg_", 48), answer, status)],
        "usage": _usage(input_tokens, text.count_tokens(answer)),
    }
    return ResponsePlan(started, final, items)


def _store(state: EmulatorState, plan: ResponsePlan) -> None:
    if plan.final["store"]:
        state.responses[plan.final["id"]] = StoredResponse(plan.final, plan.items)


def build_response(state: EmulatorState, body: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    """Non-streaming `response` object (shared with the batch runner)."""
    plan = plan_response(state, body, deployment)
    _store(state, plan)
    return plan.final


async def create_response(call: Call) -> web.StreamResponse:
    if not flag(call.json, "stream"):
        return json_response(build_response(call.state, call.json, call.target))
    plan = plan_response(call.state, call.json, call.target)
    sse = SseWriter(call.request, call.faults.chunk_interval_s)
    sequence = 0

    async def emit(event: str, **fields: Any) -> None:
        nonlocal sequence
        # Named SSE events whose data repeats the name as `type`: what the openai SDK parses.
        await sse.send({"type": event, "sequence_number": sequence, **fields}, event=event)
        sequence += 1

    message, output_text = plan.message, plan.output_text
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    await emit("response.created", response=plan.started)
    await emit("response.in_progress", response=plan.started)
    await emit("response.output_item.added", output_index=0, item=_message(message["id"], "", "in_progress"))
    await emit("response.content_part.added", **where, part=part)
    for delta in text.split_chunks(output_text, call.faults.chunks):
        await emit("response.output_text.delta", **where, delta=delta, logprobs=[])
    await emit("response.output_text.done", **where, text=output_text, logprobs=[])
    await emit("response.content_part.done", **where, part={**part, "text": output_text})
    await emit("response.output_item.done", output_index=0, item=message)
    _store(call.state, plan)
    terminal = "response.completed" if plan.final["status"] == "completed" else "response.incomplete"
    await emit(terminal, response=plan.final)
    return await sse.finish()


def _stored(call: Call) -> StoredResponse:
    return call.stored("response_id", call.state.responses, "Response with id '{id}' not found.")


async def get_response(call: Call) -> web.StreamResponse:
    return json_response(_stored(call).response)


async def delete_response(call: Call) -> web.StreamResponse:
    response_id = _stored(call).response["id"]
    del call.state.responses[response_id]
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def list_input_items(call: Call) -> web.StreamResponse:
    items = _stored(call).input_items
    return json_response(paginate(items, call.request.query, default_order="desc"))
