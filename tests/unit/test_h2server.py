"""extproc/rpc/h2server.py against grpcio's own client (a second, independent HTTP/2 + gRPC stack):
flow control both ways, many streams at once, errors as gRPC statuses, and the HPACK cache."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator

import grpc
import hpack
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorStub
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.config import load_settings
from extproc.rpc.h2server import GrpcServer, _leaves_table_alone
from extproc.runtime.worker import start_server

from .test_processor import body, headers, set_headers

BIG = 8 * 1024 * 1024  # far beyond every initial HTTP/2 window (64 KiB)


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel]]:
    with tempfile.TemporaryDirectory(prefix="gw") as tmp:
        settings = load_settings(env={
            "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com",
            "AZURE_OPENAI_API_KEY": "server-key",
            "AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}',
            "AOAI_GATEWAY_SOCKET_DIR": tmp,
            "AOAI_GATEWAY_WORKERS": "1",
        })
        socket = settings.socket_paths()[0]
        server = await start_server(settings, socket)
        assert isinstance(server, GrpcServer)
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(f"unix:{socket}", options=options) as channel:
            yield server, channel
        await server.stop(1)
        assert not server.connections


async def _exchange(channel: grpc.aio.Channel, *requests: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
    call = ExternalProcessorStub(channel).Process()
    answers = []
    for request in requests:
        await call.write(request)
        answers.append(await call.read())
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    return answers


async def test_large_body_in_and_large_rewritten_body_out(served) -> None:
    _, channel = served
    text = "x" * BIG
    _, second = await _exchange(
        channel,
        headers("POST", "/v1/responses", False, content_type="application/json"),
        body(orjson.dumps({"model": "gpt-4o", "input": text})),
    )
    # The answer (the rewritten body) is larger than the client's window: sent as it opens.
    mutation = second.request_body.response.body_mutation.body
    assert orjson.loads(mutation) == {"model": "prod-4o", "input": text}
    assert set_headers(second.request_body.response.header_mutation)["content-length"] == str(len(mutation)).encode()


async def test_many_concurrent_streams_on_one_connection(served) -> None:
    _, channel = served

    async def one(i: int) -> bytes:
        _, second = await _exchange(
            channel,
            headers("POST", f"/v1/chat/completions?n={i}", False, content_type="application/json"),
            body(b'{"model":"gpt-4o","messages":[]}'),
        )
        return set_headers(second.request_body.response.header_mutation)[":path"]

    paths = await asyncio.gather(*(one(i) for i in range(200)))
    assert paths == [
        f"/openai/deployments/prod-4o/chat/completions?n={i}&api-version=2024-10-21".encode() for i in range(200)
    ]


async def test_health_of_an_unknown_service_is_not_found(served) -> None:
    _, channel = served
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_method_is_unimplemented(served) -> None:
    _, channel = served
    call = channel.unary_unary("/some.Service/Method")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("method", ["/%" * 60, "/" + "\u00e9" * 200, "/x" * 300])
async def test_long_error_messages_keep_the_connection_usable(served, method: str) -> None:
    """The unknown method is echoed in grpc-message: percent-encoded UTF-8, cut to fit the header."""
    _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(method)(b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert len((caught.value.details() or "").encode()) <= 126
    # The same connection still serves.
    assert (await _exchange(channel, headers("GET", "/v1/models", True)))[0].HasField("immediate_response")


async def test_a_message_over_the_limit_is_refused(served) -> None:
    server, channel = served
    server.max_message_bytes = 1024
    call = ExternalProcessorStub(channel).Process()
    await call.write(headers("POST", "/v1/chat/completions", False, content_type="application/json"))
    await call.read()
    await call.write(body(b"x" * 4096))
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_message_that_is_not_a_processing_request_fails_the_call(served) -> None:
    _, channel = served
    call = channel.stream_stream("/envoy.service.ext_proc.v3.ExternalProcessor/Process")()
    await call.write(b"\xff\xff\xff")  # not protobuf
    assert await call.code() == grpc.StatusCode.UNKNOWN


def test_header_blocks_that_change_the_hpack_table_are_not_cached() -> None:
    encoder = hpack.Encoder()
    fields = [(":method", "POST"), (":path", "/envoy.service.ext_proc.v3.ExternalProcessor/Process"), ("te", "trailers")]
    first, second = encoder.encode(fields), encoder.encode(fields)
    assert not _leaves_table_alone(first)  # adds entries to the dynamic table
    assert _leaves_table_alone(second)  # indexed fields only
    assert _leaves_table_alone(encoder.encode([hpack.NeverIndexedHeaderTuple("authorization", "x" * 300)]))
    resized = hpack.Encoder()
    resized.header_table_size = 256
    assert not _leaves_table_alone(resized.encode([(":method", "GET")]))  # begins with a size update
    assert not _leaves_table_alone(second[:-1] + b"\x7f")  # truncated integer


async def test_the_grpcio_runtime_serves_the_same_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AOAI_GATEWAY_EXTPROC_RUNTIME", "grpcio")
    with tempfile.TemporaryDirectory(prefix="gw") as tmp:
        settings = load_settings(env={"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com",
                                      "AZURE_OPENAI_API_KEY": "server-key", "AOAI_GATEWAY_SOCKET_DIR": tmp})
        socket = settings.socket_paths()[0]
        server = await start_server(settings, socket)
        assert isinstance(server, grpc.aio.Server)
        try:
            async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
                first, second = await _exchange(
                    channel,
                    headers("POST", "/v1/chat/completions", False, content_type="application/json"),
                    body(b'{"model":"gpt-4o","messages":[]}'),
                )
                assert first.request_headers == pb.HeadersResponse()
                assert set_headers(second.request_body.response.header_mutation)[":path"] == (
                    b"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21")
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(None)


def test_answers_are_reused_only_when_the_key_is_the_servers() -> None:
    from extproc.core.decision import Forward
    from extproc.processor.call import ForwardCache

    forward = Forward("/openai/deployments/d/chat/completions?api-version=v", (("api-key", "key"),), "azure")
    cached = ForwardCache(enabled=True)
    assert cached.get(forward, headers_phase=False) is cached.get(forward, headers_phase=False)
    assert cached.get(forward, headers_phase=True) != cached.get(forward, headers_phase=False)
    uncached = ForwardCache(enabled=False)  # client credentials: nothing kept
    assert uncached.get(forward, headers_phase=False) == cached.get(forward, headers_phase=False)
    assert not uncached._entries
