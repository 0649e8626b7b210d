"""The emulator's own endpoints under /_emulator/ (no auth): journal, throttling rules and image blobs."""

from __future__ import annotations

import orjson
from aiohttp import web

from .handlers_images import IMAGE_PATH
from .jsonio import json_response
from .protocol import expect_handler
from .state import STATE
from .throttling import ThrottleSpec


async def list_requests(request: web.Request) -> web.StreamResponse:
    journal = request.app[STATE].journal
    return json_response([recorded.to_jsonable() for recorded in journal])


async def clear_requests(request: web.Request) -> web.StreamResponse:
    request.app[STATE].journal.clear()
    return web.Response(status=204)


async def list_throttles(request: web.Request) -> web.StreamResponse:
    return json_response([rule.to_jsonable() for rule in request.app[STATE].throttles.rules])


async def add_throttle(request: web.Request) -> web.StreamResponse:
    """A rule as JSON (the fields of ThrottleSpec); 400 with the reason when it is not one."""
    try:
        spec = ThrottleSpec.model_validate(orjson.loads(await request.read() or b"{}"))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return json_response({"error": {"code": "invalid_throttle", "message": str(exc)}}, status=400)
    return json_response(request.app[STATE].throttles.add(spec).to_jsonable(), status=201)


async def clear_throttles(request: web.Request) -> web.StreamResponse:
    request.app[STATE].throttles.clear()
    return web.Response(status=204)


async def get_image(request: web.Request) -> web.StreamResponse:
    """Stands in for the blob storage URLs DALL-E returns (unauthenticated, like a SAS URL)."""
    image = request.app[STATE].images.get(request.match_info["image_id"])
    if image is None:
        raise web.HTTPNotFound()
    return web.Response(body=image, content_type="image/png")


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/_emulator/requests", list_requests, expect_handler=expect_handler)
    app.router.add_delete("/_emulator/requests", clear_requests, expect_handler=expect_handler)
    app.router.add_get("/_emulator/throttle", list_throttles, expect_handler=expect_handler)
    app.router.add_post("/_emulator/throttle", add_throttle, expect_handler=expect_handler)
    app.router.add_delete("/_emulator/throttle", clear_throttles, expect_handler=expect_handler)
    app.router.add_get(IMAGE_PATH + "{image_id}.png", get_image, expect_handler=expect_handler)
