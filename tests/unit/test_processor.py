"""The ext_proc processor (extproc/processor/) over a real in-process gRPC channel (Unix socket), as Envoy drives it; on
both runtimes (extproc/rpc/h2server.py, the default, and grpcio's asyncio server, the fallback)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import AsyncIterator

import grpc
import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorStub
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.config import load_settings
from extproc.runtime.worker import start_server


def headers(method: str, path: str, end_of_stream: bool, **extra: str) -> pb.ProcessingRequest:
    values = {":method": method, ":path": path, ":authority": "gw", **{k.replace("_", "-"): v for k, v in extra.items()}}
    header_map = HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()])
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map, end_of_stream=end_of_stream))


def body(data: bytes, end_of_stream: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=end_of_stream))


def trailers() -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_trailers=pb.HttpTrailers(
        trailers=HeaderMap(headers=[HeaderValue(key="x-trailer", raw_value=b"1")])))


def set_headers(mutation: pb.HeaderMutation) -> dict[str, bytes]:
    return {h.header.key: h.header.raw_value for h in mutation.set_headers}


@pytest.fixture(params=["h2server", "grpcio"])
async def channel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[grpc.aio.Channel]:
    if request.param == "grpcio":
        monkeypatch.setenv("AOAI_GATEWAY_EXTPROC_RUNTIME", "grpcio")
    else:
        monkeypatch.delenv("AOAI_GATEWAY_EXTPROC_RUNTIME", raising=False)
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
        async with grpc.aio.insecure_channel(f"unix:{socket}") as chan:
            yield chan
        await server.stop(None)
        assert not Path(tmp, "unused").exists()


async def exchange(channel: grpc.aio.Channel, *requests: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
    """Send like Envoy: the next message only after the previous answer; collect until the server ends."""
    call = ExternalProcessorStub(channel).Process()
    answers = []
    for request in requests:
        await call.write(request)
        answers.append(await call.read())
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF  # the server returned right after its last answer
    assert await call.code() == grpc.StatusCode.OK
    return answers


async def refused(channel: grpc.aio.Channel, *requests: pb.ProcessingRequest) -> grpc.aio.AioRpcError:
    """Send like Envoy; the last request must get no answer but a gRPC error (Envoy then fails closed)."""
    call = ExternalProcessorStub(channel).Process()
    for request in requests[:-1]:
        await call.write(request)
        await call.read()
    await call.write(requests[-1])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    return caught.value


async def test_chat_takes_two_messages_and_rewrites_in_the_body_response(channel: grpc.aio.Channel) -> None:
    first, second = await exchange(
        channel,
        headers("POST", "/v1/chat/completions?x=1", False, authorization="Bearer client-key", content_type="application/json"),
        body(b'{"model":"gpt-4o","messages":[]}'),
    )
    assert first.request_headers == pb.HeadersResponse()  # CONTINUE: no change yet
    assert first.mode_override.request_body_mode == ProcessingMode.BUFFERED
    common = second.request_body.response
    assert set_headers(common.header_mutation) == {
        ":path": b"/openai/deployments/prod-4o/chat/completions?x=1&api-version=2024-10-21",
        "api-key": b"server-key",
        "x-aoai-gateway-cluster": b"azure",
    }
    assert list(common.header_mutation.remove_headers) == ["authorization", "proxy-authorization"]
    assert common.clear_route_cache
    assert not common.HasField("body_mutation")  # never echo the body


async def test_a_body_change_sets_content_length(channel: grpc.aio.Channel) -> None:
    _, second = await exchange(
        channel,
        headers("POST", "/v1/responses", False, content_type="application/json"),
        body(b'{"model":"gpt-4o","input":"hi"}'),
    )
    common = second.request_body.response
    assert common.body_mutation.body == b'{"model":"prod-4o","input":"hi"}'
    assert set_headers(common.header_mutation)["content-length"] == b"32"


async def test_bodiless_request_is_one_round_trip(channel: grpc.aio.Channel) -> None:
    (only,) = await exchange(channel, headers("GET", "/v1/files/file-1", True, api_key="client"))
    mutation = only.request_headers.response.header_mutation
    assert set_headers(mutation)[":path"] == b"/openai/files/file-1?api-version=2024-10-21"
    assert not only.HasField("mode_override")


async def test_upload_decided_from_headers_streams_its_body(channel: grpc.aio.Channel) -> None:
    (only,) = await exchange(channel, headers("POST", "/v1/files", False, content_type="multipart/form-data; boundary=x"))
    assert only.mode_override.request_body_mode == ProcessingMode.NONE
    # The override replaces the whole mode: response phases must stay skipped.
    assert only.mode_override.response_header_mode == ProcessingMode.SKIP


async def test_errors_are_immediate_json_replies(channel: grpc.aio.Channel) -> None:
    _, second = await exchange(channel, headers("POST", "/v1/embeddings", False), body(b"{oops"))
    reply = second.immediate_response
    assert reply.status.code == 400
    assert set_headers(reply.headers) == {"content-type": b"application/json"}
    assert orjson.loads(reply.body)["error"]["type"] == "invalid_request_error"


async def test_post_without_body_is_answered_in_the_headers_phase(channel: grpc.aio.Channel) -> None:
    (only,) = await exchange(channel, headers("POST", "/v1/chat/completions", True))
    assert only.immediate_response.status.code == 400


async def test_models_list_without_calling_azure(channel: grpc.aio.Channel) -> None:
    (only,) = await exchange(channel, headers("GET", "/v1/models", True))
    assert only.immediate_response.status.code == 200
    assert [m["id"] for m in orjson.loads(only.immediate_response.body)["data"]] == ["gpt-4o"]


async def test_health_service_is_serving(channel: grpc.aio.Channel) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_stream_closed_before_any_message_is_harmless(channel: grpc.aio.Channel) -> None:
    call = ExternalProcessorStub(channel).Process()
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_every_mode_override_is_complete_and_asks_for_trailers_only_while_the_rpc_lasts(
        channel: grpc.aio.Channel) -> None:
    (streamed,) = await exchange(channel, headers("POST", "/v1/files", False, content_type="multipart/form-data; boundary=x"))
    buffered, _ = await exchange(channel, headers("POST", "/v1/embeddings", False), body(b"{}"))
    # The stream-through answer ends the RPC: trailers must not wait for it.
    assert streamed.mode_override == ProcessingMode(
        request_header_mode=ProcessingMode.SEND, request_body_mode=ProcessingMode.NONE,
        request_trailer_mode=ProcessingMode.SKIP, response_header_mode=ProcessingMode.SKIP,
        response_body_mode=ProcessingMode.NONE, response_trailer_mode=ProcessingMode.SKIP)
    # The CONTINUE keeps the RPC open for the body, or for trailers when no body comes.
    assert buffered.mode_override == ProcessingMode(
        request_header_mode=ProcessingMode.SEND, request_body_mode=ProcessingMode.BUFFERED,
        request_trailer_mode=ProcessingMode.SEND, response_header_mode=ProcessingMode.SKIP,
        response_body_mode=ProcessingMode.NONE, response_trailer_mode=ProcessingMode.SKIP)


async def test_headers_and_trailers_without_a_body_get_the_cores_empty_body_reply(channel: grpc.aio.Channel) -> None:
    # An HTTP/2 client may send HEADERS then trailers, no DATA: Envoy sends request_trailers next.
    _, answer = await exchange(channel, headers("POST", "/v1/chat/completions", False, content_type="application/json"),
                               trailers())
    (no_body,) = await exchange(channel, headers("POST", "/v1/chat/completions", True, content_type="application/json"))
    assert answer.immediate_response.status.code == 400
    assert answer.immediate_response == no_body.immediate_response  # the core's own words for an empty body
    assert orjson.loads(answer.immediate_response.body)["error"]["type"] == "invalid_request_error"


async def test_a_body_followed_by_trailers_is_answered_and_the_rpc_ends(channel: grpc.aio.Channel) -> None:
    # BUFFERED mode: the whole body comes first (end_of_stream false, trailers follow); the answer
    # is final, so the RPC ends and Envoy lets the trailers through.
    _, second = await exchange(channel, headers("POST", "/v1/chat/completions", False, content_type="application/json"),
                               body(b'{"model":"gpt-4o","messages":[]}', end_of_stream=False))
    assert set_headers(second.request_body.response.header_mutation)["api-key"] == b"server-key"


RESPONSE_HEADERS = pb.ProcessingRequest(response_headers=pb.HttpHeaders())
CHAT_HEADERS = headers("POST", "/v1/chat/completions", False, content_type="application/json")


@pytest.mark.parametrize("requests", [
    pytest.param((trailers(),), id="trailers-first"),
    pytest.param((body(b"{}"),), id="body-first"),
    pytest.param((RESPONSE_HEADERS,), id="response-headers-first"),
    pytest.param((pb.ProcessingRequest(),), id="empty-message"),
    pytest.param((CHAT_HEADERS, CHAT_HEADERS), id="second-request-headers"),
    pytest.param((CHAT_HEADERS, RESPONSE_HEADERS), id="response-headers-while-buffering"),
    pytest.param((CHAT_HEADERS, pb.ProcessingRequest(response_body=pb.HttpBody(body=b"x"))), id="response-body"),
    pytest.param((CHAT_HEADERS, pb.ProcessingRequest(response_trailers=pb.HttpTrailers())), id="response-trailers"),
])
async def test_an_unexpected_message_fails_the_call_instead_of_ending_it_ok(
        channel: grpc.aio.Channel, requests: tuple[pb.ProcessingRequest, ...]) -> None:
    error = await refused(channel, *requests)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unexpected" in (error.details() or "")


def test_trailers_never_forward() -> None:
    """A trailers answer cannot rewrite the request's headers: should the core ever forward an empty
    body, the call fails (Envoy answers 5xx) instead of continuing unmapped."""
    from extproc.core.decision import AwaitBody, Forward
    from extproc.rpc.status import INTERNAL, RpcError
    from extproc.processor.call import ExtProcCall, ForwardCache

    class Forwarding:
        def on_headers(self, head: object) -> AwaitBody:
            return AwaitBody(lambda body: Forward("/openai/x", (("api-key", "key"),), "azure"))

    call = ExtProcCall(Forwarding(), ForwardCache(enabled=False))  # type: ignore[arg-type]
    assert call.on_message(CHAT_HEADERS.SerializeToString())[1] is False
    with pytest.raises(RpcError) as caught:
        call.on_message(trailers().SerializeToString())
    assert caught.value.status == INTERNAL
