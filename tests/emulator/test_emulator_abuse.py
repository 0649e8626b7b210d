"""Hostile and malformed requests get Azure's JSON errors, fast, and nothing the emulator keeps grows without bound."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy

from extproc.emulator import EmulatorSettings, RecordedRequest, RunningEmulator, start_emulator

from .conftest import API_KEY, API_VERSION, wav_bytes

AUTH = {"api-key": API_KEY}
VERSION = {"api-version": API_VERSION}
PREVIEW = {"api-version": "2025-04-01-preview"}
CHAT_PATH = "/openai/deployments/gpt-4o/chat/completions"
CHAT_TARGET = f"{CHAT_PATH}?api-version={API_VERSION}".encode()
CHAT_BODY = b'{"messages":[{"role":"user","content":"ping"}]}'
TRANSCRIBE_PATH = "/openai/deployments/whisper/audio/transcriptions"
RESOURCE_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
C_PARSER = HttpRequestParser is not HttpRequestParserPy  # llhttp, as installed; the Python one is a fallback


def http_request(
    method: bytes = b"POST", target: bytes = CHAT_TARGET, headers: bytes = b"", body: bytes = CHAT_BODY
) -> bytes:
    return (
        method + b" " + target + b" HTTP/1.1\r\nHost: emulator\r\napi-key: " + API_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n" + headers
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection and read the answer until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    return parse_response(raw)


def assert_azure_json_error(headers: dict[str, str], body: bytes) -> dict[str, object]:
    assert headers["content-type"] == "application/json"
    assert headers["apim-request-id"] and headers["x-ms-region"]
    error = httpx.Response(200, content=body).json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    return error


# -- 1. requests aiohttp's HTTP parser rejects ------------------------------------------------------

MALFORMED = {
    "request line over 8190 bytes": http_request(target=b"/openai/" + b"a" * 9000),
    "header line over 8190 bytes": http_request(headers=b"x-long: " + b"b" * 9000 + b"\r\n"),
    "header name with a space": http_request(headers=b"Bad Header: 1\r\n"),
    # (ends in a blank line: aiohttp's Python parser, unlike llhttp, waits for a whole line before refusing)
    "TLS handshake on the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n",
    "garbage request line": b"\x00\x01\x02 / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "conflicting content lengths": http_request(headers=b"Content-Length: 3\r\n"),
    "broken chunked framing": http_request(headers=b"Transfer-Encoding: chunked\r\n", body=b"ZZ\r\nxx\r\n0\r\n\r\n")
    .replace(b"Content-Length: " + str(len(b"ZZ\r\nxx\r\n0\r\n\r\n")).encode() + b"\r\n", b""),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_requests_get_a_json_400(
    emulator: RunningEmulator, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await exchange(emulator.port, data)
    assert status == 400
    error = assert_azure_json_error(headers, body)
    assert error["code"] == "BadRequest"
    assert b"aaaa" not in body and b"bbbb" not in body  # the client's bytes are not echoed back
    # Routine for a server on a network: no error log, no traceback, and nothing of the request logged.
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "aaaa" not in caplog.text and "bbbb" not in caplog.text
    assert emulator.journal == []  # never a request the app saw


async def test_long_request_line_says_so(emulator: RunningEmulator) -> None:
    status, headers, body = await exchange(emulator.port, MALFORMED["request line over 8190 bytes"])
    assert status == 400
    assert "8190" in str(assert_azure_json_error(headers, body)["message"])


@pytest.mark.parametrize(
    "method",
    [
        b"FOO",
        pytest.param(
            b"post",
            marks=pytest.mark.skipif(not C_PARSER, reason="aiohttp's Python parser upper-cases methods itself"),
        ),
        b"PROPFIND",
    ],
)
async def test_unknown_methods_get_azures_404(emulator: RunningEmulator, method: bytes) -> None:
    status, headers, body = await exchange(emulator.port, http_request(method=method))
    assert status == 404
    assert_azure_json_error(headers, body)
    assert httpx.Response(200, content=body).json() == RESOURCE_NOT_FOUND


async def test_the_server_keeps_serving_after_parser_errors(emulator: RunningEmulator) -> None:
    for data in [*MALFORMED.values(), http_request(method=b"FOO")]:
        await exchange(emulator.port, data)
    status, _, body = await exchange(emulator.port, http_request())
    assert status == 200 and b"Echo: ping" in body


# -- 2. compressed request bodies --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(CHAT_BODY)),  # valid gzip
        ("gzip", CHAT_BODY),  # says gzip, is not (this used to be a text/plain 500)
        ("br", b"\x8b\x02\x80"),
        ("deflate, gzip", b"whatever"),
    ],
)
async def test_compressed_bodies_get_a_json_415(
    http: httpx.AsyncClient, emulator: RunningEmulator, encoding: str, body: bytes
) -> None:
    headers = {**AUTH, "content-type": "application/json", "content-encoding": encoding}
    response = await http.post(CHAT_PATH, params=VERSION, content=body, headers=headers)
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/json"
    assert response.headers["accept-encoding"] == "identity"
    error = response.json()["error"]
    assert error["code"] == "UnsupportedMediaType" and encoding.split(",")[0] in error["message"]
    [recorded] = emulator.journal  # journaled as received, not inflated or parsed
    assert recorded.body == body and recorded.json is None


async def test_compressed_bodies_still_need_auth(http: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = await http.post(CHAT_PATH, params=VERSION, content=gzip.compress(CHAT_BODY), headers=headers)
    assert response.status_code == 401


async def test_identity_encoding_is_plain(http: httpx.AsyncClient) -> None:
    headers = {**AUTH, "content-type": "application/json", "content-encoding": "identity"}
    response = await http.post(CHAT_PATH, params=VERSION, content=CHAT_BODY, headers=headers)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "Echo: ping"


async def test_compressed_multipart_parts_are_kept_as_sent(
    http: httpx.AsyncClient, emulator: RunningEmulator
) -> None:
    bomb = gzip.compress(b"\x00" * 20_000_000)  # ~20 KB that would inflate to 20 MB
    body = (
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
        b"Content-Encoding: gzip\r\n\r\n" + bomb + b"\r\n--b--\r\n"
    )
    headers = {**AUTH, "content-type": "multipart/form-data; boundary=b"}
    response = await http.post(TRANSCRIBE_PATH, params=VERSION, content=body, headers=headers)
    assert response.status_code == 200
    described = {"filename": "a.wav", "size": len(bomb), "content_type": "application/octet-stream"}
    assert emulator.journal[-1].form == {"file": described}  # the part as sent, not inflated


# -- 3. Expect ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "target", [CHAT_TARGET, b"/no/such/path", b"/_emulator/requests"], ids=["api", "unknown path", "admin"]
)
async def test_unknown_expectation_gets_a_json_417(emulator: RunningEmulator, target: bytes) -> None:
    status, headers, body = await exchange(emulator.port, http_request(target=target, headers=b"Expect: garbage\r\n"))
    assert status == 417
    error = assert_azure_json_error(headers, body)
    assert error["code"] == "417" and "100-continue" in str(error["message"])


async def test_expect_100_continue_still_works(emulator: RunningEmulator) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    try:
        request = http_request(headers=b"Expect: 100-continue\r\n")
        head, body = request[: -len(CHAT_BODY)], CHAT_BODY
        writer.write(head)  # the headers alone: the body waits for the interim answer
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        await writer.drain()
        status, headers, answer = parse_response(await asyncio.wait_for(reader.read(), timeout=10))
    finally:
        writer.close()
    assert status == 200 and headers["content-type"] == "application/json"
    assert b'"content":"Echo: ping"' in answer
    assert emulator.journal[-1].json == {"messages": [{"role": "user", "content": "ping"}]}


# -- 4. huge multipart bodies ------------------------------------------------------------------------

def many_parts(count: int, boundary: bytes = b"XyZ") -> bytes:
    part = b"--%s\r\nContent-Disposition: form-data; name=\"f%%d\"\r\n\r\nv\r\n" % boundary
    return b"".join(part % i for i in range(count)) + b"--%s--\r\n" % boundary


async def test_a_100k_part_body_is_refused_quickly(http: httpx.AsyncClient) -> None:
    body = many_parts(100_000)
    headers = {**AUTH, "content-type": "multipart/form-data; boundary=XyZ"}
    started = time.monotonic()
    response = await http.post(TRANSCRIBE_PATH, params=VERSION, content=body, headers=headers, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "BadRequest",
        "message": "The multipart body has more than 1000 parts.",
        "param": None,
        "type": None,
    }
    assert elapsed < 3, f"took {elapsed:.1f} s"


async def test_nested_parts_count_too(http: httpx.AsyncClient) -> None:
    inner = many_parts(5_000, b"In")
    body = b"--XyZ\r\nContent-Type: multipart/mixed; boundary=In\r\n\r\n" + inner + b"\r\n--XyZ--\r\n"
    headers = {**AUTH, "content-type": "multipart/form-data; boundary=XyZ"}
    response = await http.post(TRANSCRIBE_PATH, params=VERSION, content=body, headers=headers)
    assert response.status_code == 400 and "more than 1000 parts" in response.json()["error"]["message"]


async def test_the_part_limit_is_a_setting() -> None:
    async with await start_emulator(EmulatorSettings(multipart_max_parts=2)) as emu:
        async with httpx.AsyncClient(base_url=emu.url) as http:
            upload = {"file": ("a.wav", wav_bytes(), "audio/wav")}
            ok = await http.post(
                TRANSCRIBE_PATH, params=VERSION, headers=AUTH, data={"response_format": "json"}, files=upload
            )
            refused = await http.post(
                TRANSCRIBE_PATH,
                params=VERSION,
                headers=AUTH,
                data={"response_format": "json", "language": "en"},
                files=upload,
            )
    assert ok.status_code == 200
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "The multipart body has more than 2 parts."


# -- 5. bounded memory -------------------------------------------------------------------------------

@pytest.fixture
async def small() -> AsyncIterator[tuple[RunningEmulator, httpx.AsyncClient]]:
    settings = EmulatorSettings(journal_max_requests=3, store_max_items=2)
    async with await start_emulator(settings) as emu:
        async with httpx.AsyncClient(base_url=emu.url, timeout=10) as http:
            yield emu, http


async def chat(http: httpx.AsyncClient, text: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}]}
    return await http.post(CHAT_PATH, params=VERSION, json=body, headers=AUTH)


async def test_the_journal_keeps_the_newest_requests(small: tuple[RunningEmulator, httpx.AsyncClient]) -> None:
    emu, http = small
    for n in range(5):
        assert (await chat(http, f"message {n}")).status_code == 200
    assert [r.json["messages"][0]["content"] for r in emu.journal] == ["message 2", "message 3", "message 4"]
    listed = (await http.get("/_emulator/requests")).json()
    assert [entry["json"]["messages"][0]["content"] for entry in listed] == ["message 2", "message 3", "message 4"]
    emu.clear_journal()
    assert emu.journal == [] and emu.journal.retained_bytes == 0


async def test_big_bodies_are_journaled_cut_but_measured() -> None:
    settings = EmulatorSettings(journal_max_body_bytes=1_000)
    async with await start_emulator(settings) as emu:
        async with httpx.AsyncClient(base_url=emu.url, timeout=10) as http:
            small_response = await chat(http, "small")
            big_response = await chat(http, "x" * 5_000)
            listed = (await http.get("/_emulator/requests")).json()
    assert small_response.status_code == big_response.status_code == 200  # answered from the whole body
    small_entry, big_entry = emu.journal
    assert small_entry.json == {"messages": [{"role": "user", "content": "small"}]} and not small_entry.truncated
    assert len(big_entry.body) == 1_000 and big_entry.body_length > 5_000 and big_entry.truncated
    assert big_entry.json is None  # a cut JSON body cannot be read back
    assert listed[1]["body_length"] == big_entry.body_length and listed[1]["json"] is None


async def test_default_journal_keeps_a_2_mib_body_whole(http: httpx.AsyncClient, emulator: RunningEmulator) -> None:
    # What the end-to-end tests assert on: a body near the gateway's 2 MiB limit, byte for byte.
    text = "y" * (2 * 1024 * 1024 - 1024)
    assert (await chat(http, text)).status_code == 200
    recorded = emulator.journal[-1]
    assert len(recorded.body) == recorded.body_length and recorded.json["messages"][0]["content"] == text


async def test_the_journal_has_a_byte_budget() -> None:
    settings = EmulatorSettings(journal_max_bytes=40_000)
    async with await start_emulator(settings) as emu:
        async with httpx.AsyncClient(base_url=emu.url, timeout=10) as http:
            for n in range(10):
                await chat(http, f"{n}" * 10_000)
    assert 1 <= len(emu.journal) <= 4
    assert emu.journal.retained_bytes <= 40_000
    assert emu.journal[-1].json["messages"][0]["content"] == "9" * 10_000  # the newest is always there


def entry(path: str, body: bytes = b"") -> RecordedRequest:
    return RecordedRequest("POST", path, {}, {"content-type": "application/json"}, body, None)


def test_journal_bookkeeping() -> None:
    from extproc.emulator.journal import Journal

    journal = Journal(max_requests=3, max_bytes=10_000)
    for n in range(5):
        journal.append(entry(f"/{n}", b"{}"))
    assert [r.path for r in journal] == ["/2", "/3", "/4"]
    assert journal.retained_bytes == sum(r.retained_bytes for r in journal)
    journal.pop(0)
    del journal[0]
    assert [r.path for r in journal] == ["/4"] and journal.retained_bytes == journal[0].retained_bytes
    journal.append(entry("/huge", b"z" * 50_000))  # over the byte budget alone: kept, the rest goes
    assert [r.path for r in journal] == ["/huge"]
    assert journal == [entry("/huge", b"z" * 50_000)]
    journal.clear()
    assert journal == [] and journal.retained_bytes == 0
    off = Journal(max_requests=0, max_bytes=10_000)
    off.append(entry("/x"))
    assert off == []


async def upload(http: httpx.AsyncClient, name: str, data: bytes = b"{}\n") -> str:
    response = await http.post(
        "/openai/files", params=VERSION, headers=AUTH, data={"purpose": "batch"}, files={"file": (name, data)}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


async def test_files_keep_the_newest(small: tuple[RunningEmulator, httpx.AsyncClient]) -> None:
    _, http = small
    ids = [await upload(http, f"f{n}.jsonl") for n in range(3)]
    listed = (await http.get("/openai/files", params=VERSION, headers=AUTH)).json()["data"]
    assert {f["id"] for f in listed} == set(ids[1:])
    gone = await http.get(f"/openai/files/{ids[0]}", params=VERSION, headers=AUTH)
    assert gone.status_code == 404 and gone.json()["error"]["message"] == f"File with id '{ids[0]}' was not found."


async def test_file_bytes_are_bounded() -> None:
    async with await start_emulator(EmulatorSettings(store_max_bytes=100)) as emu:
        async with httpx.AsyncClient(base_url=emu.url, timeout=10) as http:
            first = await upload(http, "a.jsonl", b"a" * 60)
            second = await upload(http, "b.jsonl", b"b" * 60)  # 120 bytes together: the older goes
            third = await upload(http, "c.jsonl", b"c" * 500)  # alone over the cap: still kept
            content = await http.get(f"/openai/files/{third}/content", params=VERSION, headers=AUTH)
            statuses = [
                (await http.get(f"/openai/files/{file_id}", params=VERSION, headers=AUTH)).status_code
                for file_id in (first, second, third)
            ]
    assert statuses == [404, 404, 200]
    assert content.content == b"c" * 500


async def test_responses_batches_and_images_keep_the_newest(small: tuple[RunningEmulator, httpx.AsyncClient]) -> None:
    _, http = small
    response_ids = []
    for n in range(3):
        body = {"model": "gpt-4o", "input": f"r{n}"}
        created = await http.post("/openai/responses", params=PREVIEW, headers=AUTH, json=body)
        response_ids.append(created.json()["id"])
    statuses = [
        (await http.get(f"/openai/responses/{rid}", params=PREVIEW, headers=AUTH)).status_code for rid in response_ids
    ]
    assert statuses == [404, 200, 200]
    follow_up = await http.post(
        "/openai/responses",
        params=PREVIEW,
        headers=AUTH,
        json={"model": "gpt-4o", "input": "again", "previous_response_id": response_ids[0]},
    )
    assert follow_up.status_code == 400 and follow_up.json()["error"]["param"] == "previous_response_id"

    file_id = await upload(http, "batch.jsonl")
    batch_ids = []
    for _ in range(3):
        batch = await http.post(
            "/openai/batches",
            params=VERSION,
            headers=AUTH,
            json={"input_file_id": file_id, "endpoint": "/chat/completions", "completion_window": "24h"},
        )
        batch_ids.append(batch.json()["id"])
    listed = (await http.get("/openai/batches", params=VERSION, headers=AUTH)).json()["data"]
    assert {b["id"] for b in listed} == set(batch_ids[1:])

    urls = []
    for _ in range(3):
        image = await http.post(
            "/openai/deployments/dall-e-3/images/generations", params=VERSION, headers=AUTH, json={"prompt": "cat"}
        )
        urls.append(image.json()["data"][0]["url"])
    fetched = [(await http.get(url)).status_code for url in urls]
    assert fetched == [404, 200, 200]


@pytest.mark.parametrize(
    "field", ["journal_max_requests", "journal_max_body_bytes", "journal_max_bytes", "store_max_bytes"]
)
def test_negative_caps_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EmulatorSettings(**{field: -1})


@pytest.mark.parametrize("field", ["store_max_items", "multipart_max_parts"])
def test_zero_caps_are_refused_where_they_would_break_the_api(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EmulatorSettings(**{field: 0})
