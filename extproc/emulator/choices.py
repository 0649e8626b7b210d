"""What chat and legacy completions share: choice objects, and answering plain or streamed."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, TypeVar

from aiohttp import web

from .context import Call
from .filters import content_filter_results, stream_preamble
from .jsonio import json_response
from .sse import DONE, SseWriter


class Plan(Protocol):
    """A validated request and the answer planned for it."""

    @property
    def stream(self) -> bool: ...

    @property
    def include_usage(self) -> bool: ...

    @property
    def prompts(self) -> int: ...

    @property
    def usage(self) -> dict[str, Any]: ...


P = TypeVar("P", bound=Plan)


def include_usage(stream_options: Any) -> bool:
    """Whether `stream_options` asks for a final usage event."""
    return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


def choice(index: int, finish_reason: str | None, filtered: bool = True, **content: Any) -> dict[str, Any]:
    """One choice: `content` is `message`, `delta` or `text`. Stream-closing choices carry
    empty filter results (`filtered=False`). Azure writes the keys in alphabetical order."""
    fields = {
        "content_filter_results": content_filter_results() if filtered else {},
        "finish_reason": finish_reason,
        "index": index,
        "logprobs": None,
        **content,
    }
    return dict(sorted(fields.items()))


async def reply(
    call: Call,
    plan: P,
    body: Callable[[P], dict[str, Any]],
    frame: dict[str, Any],
    stream_choices: Callable[[P, int], Iterable[dict[str, Any]]],
) -> web.StreamResponse:
    """`body(plan)` as JSON, or, for a streamed request, Azure's event stream: the prompt
    filter results, one event per choice from `stream_choices(plan, pieces)` (each event
    repeating `frame`), a usage event when asked for, then `[DONE]`."""
    if not plan.stream:
        return json_response(body(plan))
    sse = SseWriter(call.request, call.faults.chunk_interval_s)
    await sse.send(stream_preamble(plan.prompts))
    for item in stream_choices(plan, call.faults.chunks):
        await sse.send({"choices": [item], **frame})
    if plan.include_usage:
        await sse.send({"choices": [], **frame, "usage": plan.usage})
    await sse.send(DONE)
    return await sse.finish()
