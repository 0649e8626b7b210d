"""Images: generations (JSON) and edits (multipart); tiny PNGs as URLs or base64."""

from __future__ import annotations

import base64
import time
from typing import Any

from aiohttp import web

from . import media, text
from .context import Call, Deployment
from .errors import invalid_request, missing_field
from .filters import content_filter_results, prompt_filter_results
from .ids import hex_id
from .jsonio import json_response
from .state import EmulatorState

IMAGE_PATH = "/_emulator/images/"


def _is_gpt_image(deployment: Deployment) -> bool:
    return deployment.model.startswith("gpt-image")


def _count(value: Any, deployment: Deployment) -> int:
    count = 1 if value is None else value
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
        raise invalid_request(f"Invalid 'n': {value!r}.", param="n")
    if deployment.model.startswith("dall-e-3") and count != 1:
        raise invalid_request("You must provide n=1 for this model.", param="n")
    return count


def _images(
    state: EmulatorState, deployment: Deployment, prompt: str, count: int, response_format: Any
) -> dict[str, Any]:
    # gpt-image-* only ever returns base64; DALL-E defaults to a (blob storage) URL.
    if _is_gpt_image(deployment):
        response_format = "b64_json"
    response_format = response_format or "url"
    if response_format not in ("url", "b64_json"):
        raise invalid_request(
            f"'{response_format}' is not one of ['url', 'b64_json'] - 'response_format'", param="response_format"
        )
    data = []
    for _ in range(count):
        item: dict[str, Any] = {}
        if response_format == "b64_json":
            item["b64_json"] = base64.b64encode(media.TINY_PNG).decode()
        else:
            image_id = hex_id("img_")
            state.images[image_id] = media.TINY_PNG
            item["url"] = f"{state.base_url}{IMAGE_PATH}{image_id}.png"
        if not _is_gpt_image(deployment):
            # DALL-E on Azure annotates each image and rewrites the prompt.
            item["content_filter_results"] = content_filter_results()
            item["prompt_filter_results"] = prompt_filter_results()[0]["content_filter_results"]
            item["revised_prompt"] = f"Revised: {prompt}"
        data.append(item)
    result: dict[str, Any] = {"created": int(time.time()), "data": data}
    if _is_gpt_image(deployment):
        tokens = text.count_tokens(prompt)
        result["usage"] = {
            "input_tokens": tokens,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": tokens},
            "output_tokens": 272 * count,
            "total_tokens": tokens + 272 * count,
        }
    return result


async def create_image(call: Call) -> web.StreamResponse:
    body = call.json
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise missing_field("prompt")
    count = _count(body.get("n"), call.target)
    return json_response(_images(call.state, call.target, prompt, count, body.get("response_format")))


async def edit_image(call: Call) -> web.StreamResponse:
    form = call.form
    if not form.file_list("image", "image[]"):
        raise missing_field("image")
    prompt = form.value("prompt")
    if not prompt:
        raise missing_field("prompt")
    n = form.value("n")
    count = _count(int(n) if n is not None and n.isdigit() else n, call.target)  # form values are strings
    return json_response(_images(call.state, call.target, prompt, count, form.value("response_format")))
