"""Files: upload (multipart), list, retrieve, download content, delete."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .context import Call
from .errors import invalid_request, missing_field
from .ids import hex_id
from .jsonio import json_response
from .paging import paginate
from .state import EmulatorState, StoredFile

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


def add_file(
    state: EmulatorState, purpose: str, filename: str, data: bytes, expires_after_s: int | None = None
) -> dict[str, Any]:
    """Store a file and return its `file` object (also used for batch output files)."""
    created = int(time.time())
    info: dict[str, Any] = {
        "object": "file",
        "id": hex_id("file-"),
        "purpose": purpose,
        "filename": filename,
        "bytes": len(data),
        "created_at": created,
        "status": "processed",
        "status_details": None,
    }
    if expires_after_s is not None:
        info["expires_at"] = created + expires_after_s
    state.files[info["id"]] = StoredFile(info, data)
    return info


async def upload_file(call: Call) -> web.StreamResponse:
    form = call.form
    purpose = form.value("purpose")
    if not purpose:
        raise missing_field("purpose")
    if purpose not in PURPOSES:
        raise invalid_request(f"'{purpose}' is not one of {list(PURPOSES)} - 'purpose'", param="purpose")
    uploads = form.file_list("file")
    if not uploads:
        raise missing_field("file")
    seconds = form.value("expires_after[seconds]")
    expires = int(seconds) if seconds and seconds.isdigit() else None
    return json_response(add_file(call.state, purpose, uploads[0].filename, uploads[0].data, expires))


def _stored(call: Call) -> StoredFile:
    return call.stored("file_id", call.state.files, "File with id '{id}' was not found.")


async def list_files(call: Call) -> web.StreamResponse:
    purpose = call.request.query.get("purpose")
    infos = [f.info for f in call.state.files.values() if purpose is None or f.info["purpose"] == purpose]
    return json_response(paginate(infos, call.request.query, default_order="desc", default_limit=10_000))


async def get_file(call: Call) -> web.StreamResponse:
    return json_response(_stored(call).info)


async def get_file_content(call: Call) -> web.StreamResponse:
    return web.Response(body=_stored(call).data, content_type="application/octet-stream")


async def delete_file(call: Call) -> web.StreamResponse:
    file_id = _stored(call).info["id"]
    del call.state.files[file_id]
    return json_response({"object": "file", "id": file_id, "deleted": True})
