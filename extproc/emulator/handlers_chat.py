"""POST .../chat/completions: the echoing chat model, plain and streamed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import text
from .choices import choice, include_usage, reply
from .context import Call, Deployment
from .errors import invalid_request
from .filters import prompt_filter_results
from .ids import SYSTEM_FINGERPRINT, alphanumeric_id
from .validation import flag, optional_int, require


@dataclass(frozen=True)
class ChatPlan:
    """The validated request and the answer the emulated model gives to it."""

    id: str
    created: int
    model: str
    answer: str
    finish_reason: str
    choices: int
    prompt_tokens: int
    stream: bool
    include_usage: bool
    prompts: int = 1  # chat has one prompt: the conversation

    @property
    def usage(self) -> dict[str, Any]:
        completion = text.count_tokens(self.answer) * self.choices
        return {
            "completion_tokens": completion,
            "completion_tokens_details": {
                "accepted_prediction_tokens": 0,
                "audio_tokens": 0,
                "reasoning_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
            "total_tokens": self.prompt_tokens + completion,
        }


def plan_chat(body: dict[str, Any], deployment: Deployment) -> ChatPlan:
    messages = require(body, "messages")
    if not isinstance(messages, list):
        raise invalid_request(f"{messages!r} is not of type 'array' - 'messages'", param="messages")
    if not messages:
        raise invalid_request("[] is too short - 'messages'", param="messages")
    stream = flag(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not stream:
        raise invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    limit = optional_int(body, "max_completion_tokens", 1, 1_000_000)
    if limit is None:
        limit = optional_int(body, "max_tokens", 1, 1_000_000)
    answer, truncated = text.truncate(text.echo(text.last_user_text(messages)), limit)
    # ~4 tokens of framing per message, as OpenAI's chat format adds.
    prompt_tokens = sum(
        text.count_tokens(text.content_text(m.get("content"))) + 4 for m in messages if isinstance(m, dict)
    )
    return ChatPlan(
        id=alphanumeric_id("chatcmpl-"),
        created=int(time.time()),
        model=deployment.reported_model,
        answer=answer,
        finish_reason="length" if truncated else "stop",
        choices=optional_int(body, "n", 1, 128) or 1,
        prompt_tokens=prompt_tokens + 3,
        stream=stream,
        include_usage=include_usage(stream_options),
    )


def chat_completion(plan: ChatPlan) -> dict[str, Any]:
    message = {"annotations": [], "content": plan.answer, "refusal": None, "role": "assistant"}
    return {
        "choices": [choice(index, plan.finish_reason, message=message) for index in range(plan.choices)],
        "created": plan.created,
        "id": plan.id,
        "model": plan.model,
        "object": "chat.completion",
        "prompt_filter_results": prompt_filter_results(),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": plan.usage,
    }


def build_chat_completion(body: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    """Non-streaming body for a request (shared with the batch runner)."""
    return chat_completion(plan_chat(body, deployment))


async def create_chat_completion(call: Call) -> web.StreamResponse:
    plan = plan_chat(call.json, call.target)
    frame: dict[str, Any] = {
        "created": plan.created,
        "id": plan.id,
        "model": plan.model,
        "object": "chat.completion.chunk",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if plan.include_usage:
        frame["usage"] = None  # present but null until the final usage event, as OpenAI does
    return await reply(call, plan, chat_completion, frame, _stream_choices)


def _stream_choices(plan: ChatPlan, pieces: int) -> Iterator[dict[str, Any]]:
    for position, chunk in enumerate(text.split_chunks(plan.answer, pieces)):
        for index in range(plan.choices):
            delta = {"role": "assistant", "content": chunk} if position == 0 else {"content": chunk}
            yield choice(index, None, delta=delta)
    for index in range(plan.choices):
        yield choice(index, plan.finish_reason, filtered=False, delta={})
