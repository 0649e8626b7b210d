"""Azure's content-filter annotations: every emulated prompt and answer is judged safe."""

from __future__ import annotations

from typing import Any

_SEVERITY = {"filtered": False, "severity": "safe"}
_DETECTED = {"filtered": False, "detected": False}


def content_filter_results() -> dict[str, Any]:
    """Annotations on a completion choice."""
    return {
        "hate": dict(_SEVERITY),
        "protected_material_code": dict(_DETECTED),
        "protected_material_text": dict(_DETECTED),
        "self_harm": dict(_SEVERITY),
        "sexual": dict(_SEVERITY),
        "violence": dict(_SEVERITY),
    }


def stream_preamble(prompts: int = 1) -> dict[str, Any]:
    """Azure's first streamed event: no choices, blank identity, the prompts' filter results."""
    return {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": prompt_filter_results(prompts),
    }


def prompt_filter_results(prompts: int = 1) -> list[dict[str, Any]]:
    """Annotations on each prompt (Azure adds jailbreak detection on the input side)."""
    results = {
        "hate": dict(_SEVERITY),
        "jailbreak": dict(_DETECTED),
        "self_harm": dict(_SEVERITY),
        "sexual": dict(_SEVERITY),
        "violence": dict(_SEVERITY),
    }
    return [{"prompt_index": index, "content_filter_results": results} for index in range(prompts)]
