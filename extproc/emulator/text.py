"""Deterministic "model output": echo the prompt, count tokens, cut text into stream chunks."""

from __future__ import annotations

import re
from typing import Any

# A rough tokenizer: each word with its leading whitespace. Joining the pieces gives the
# text back exactly, which is what streaming relies on.
_PIECE = re.compile(r"\s*\S+|\s+")


def pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


def count_tokens(text: str) -> int:
    return len(pieces(text))


def echo(text: str) -> str:
    """The emulator's answer to any prompt: tests can see their input made it through."""
    return f"Echo: {text}"


def content_text(content: Any) -> str:
    """Text of a message `content`: a string or a list of parts (text/input_text/output_text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut to `max_tokens` pieces; the flag says whether anything was cut (finish_reason=length)."""
    parts = pieces(text)
    if max_tokens is None or len(parts) <= max_tokens:
        return text, False
    return "".join(parts[: max(max_tokens, 0)]), True


def split_chunks(text: str, count: int) -> list[str]:
    """Split into `count` non-empty chunks (fewer if the text is too short) that join to `text`."""
    units = pieces(text)
    if len(units) < count:
        units = list(text)  # too few words: fall back to characters
    count = max(1, min(count, len(units)))
    size, extra = divmod(len(units), count)
    chunks: list[str] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        chunks.append("".join(units[start:end]))
        start = end
    return chunks
