"""POST .../completions: the legacy text completions API, plain and streamed."""

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
from .ids import alphanumeric_id
from .validation import flag, optional_int, require

# The legacy API's default `max_tokens` (Azure and OpenAI alike): long echoes get cut.
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class CompletionPlan:
    id: str
    created: int
    model: str
    answers: list[tuple[str, str]]  # (text, finish_reason) per choice, prompt-major
    prompts: int
    prompt_tokens: int
    stream: bool
    include_usage: bool

    @property
    def usage(self) -> dict[str, int]:
        completion = sum(text.count_tokens(answer) for answer, _ in self.answers)
        return {
            "completion_tokens": completion,
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + completion,
        }


def _prompt_texts(prompt: Any) -> list[str]:
    """A prompt may be a string, a list of strings, a token array or a list of token arrays."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(item, int) for item in prompt):
        return [" ".join(map(str, prompt))]
    if isinstance(prompt, list) and prompt:
        texts: list[str] = []
        for item in prompt:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(token, int) for token in item):
                texts.append(" ".join(map(str, item)))
            else:
                break
        else:
            return texts
    raise invalid_request(f"{prompt!r} is not valid under any of the given schemas - 'prompt'", param="prompt")


def plan_completion(body: dict[str, Any], deployment: Deployment) -> CompletionPlan:
    prompts = _prompt_texts(require(body, "prompt"))
    choices = optional_int(body, "n", 1, 128) or 1
    limit = optional_int(body, "max_tokens", 0, 1_000_000)
    limit = DEFAULT_MAX_TOKENS if limit is None else limit
    answers = []
    for prompt in prompts:
        answer, truncated = text.truncate(text.echo(prompt), limit)
        answers.extend([(answer, "length" if truncated else "stop")] * choices)
    return CompletionPlan(
        id=alphanumeric_id("cmpl-"),
        created=int(time.time()),
        model=deployment.reported_model,
        answers=answers,
        prompts=len(prompts),
        prompt_tokens=sum(text.count_tokens(prompt) for prompt in prompts),
        stream=flag(body, "stream"),
        include_usage=include_usage(body.get("stream_options")),
    )


def completion(plan: CompletionPlan) -> dict[str, Any]:
    return {
        "choices": [
            choice(index, finish_reason, text=answer) for index, (answer, finish_reason) in enumerate(plan.answers)
        ],
        "created": plan.created,
        "id": plan.id,
        "model": plan.model,
        "object": "text_completion",
        "prompt_filter_results": prompt_filter_results(plan.prompts),
        "usage": plan.usage,
    }


def build_completion(body: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    return completion(plan_completion(body, deployment))


async def create_completion(call: Call) -> web.StreamResponse:
    plan = plan_completion(call.json, call.target)
    frame = {"created": plan.created, "id": plan.id, "model": plan.model, "object": "text_completion"}
    return await reply(call, plan, completion, frame, _stream_choices)


def _stream_choices(plan: CompletionPlan, pieces: int) -> Iterator[dict[str, Any]]:
    for index, (answer, finish_reason) in enumerate(plan.answers):
        for chunk in text.split_chunks(answer, pieces):
            yield choice(index, None, text=chunk)
        yield choice(index, finish_reason, filtered=False, text="")
