"""A minimal OpenAI -> Azure OpenAI proxy in FastAPI + httpx, as users write them before a gateway:
one of the peers of `python -m bench --peers`. It runs in its own venv (bench/peers_setup.sh), not
the project's, so it imports nothing from the project.

    AZURE_OPENAI_ENDPOINT=... AZURE_OPENAI_API_KEY=... MODEL_MAP='{"gpt-4o": "prod-chat"}' \\
        uvicorn fastapi_proxy:app --app-dir bench --workers 1
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx
from fastapi import FastAPI, Request, Response

ENDPOINT = os.environ["AZURE_OPENAI_ENDPOINT"].rstrip("/")
API_KEY = os.environ["AZURE_OPENAI_API_KEY"]
API_VERSION = os.environ.get("AZURE_OPENAI_API_VERSION", "2024-10-21")
MODEL_MAP: dict[str, str] = json.loads(os.environ.get("MODEL_MAP", "{}"))  # OpenAI model -> Azure deployment

client: httpx.AsyncClient


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # One pooled client for the process: a client per request would pay a TCP connect each time.
    global client
    async with httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=None)) as client:
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await request.json()
    deployment = MODEL_MAP.get(body.get("model", ""), body.get("model", ""))
    upstream = await client.post(
        f"{ENDPOINT}/openai/deployments/{deployment}/chat/completions",
        params={"api-version": API_VERSION},
        headers={"api-key": API_KEY},
        json=body,
    )
    return Response(upstream.content, upstream.status_code,
                    media_type=upstream.headers.get("content-type", "application/json"))
