"""The emulator's own endpoints under /_emulator/ (no auth): journal and image blobs."""

from __future__ import annotations

from aiohttp import web

from .handlers_images import IMAGE_PATH
from .jsonio import json_response
from .protocol import expect_handler
from .state import STATE


async def list_requests(request: web.Request) -> web.StreamResponse:
    journal = request.app[STATE].journal
    return json_response([recorded.to_jsonable() for recorded in journal])


async def clear_requests(request: web.Request) -> web.StreamResponse:
    request.app[STATE].journal.clear()
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
    app.router.add_get(IMAGE_PATH + "{image_id}.png", get_image, expect_handler=expect_handler)
