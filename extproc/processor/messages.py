"""Envoy ext_proc protobufs <-> the core's plain data: the request head in, decisions out."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct

from ..auth.client import CLIENT_HEADER
from ..auth.upstream import UPSTREAM_AUTHORIZATION_HEADER
from ..core.decision import Forward, Reply, RequestHead, Tunnel
from ..routing import POOL_METADATA_NAMESPACE, REQUEST_METADATA_NAMESPACE

ROUTE_HEADER = "x-aoai-gateway-cluster"  # matched exactly by the routes upstream; clients' copies are stripped
# The client's credentials never reach upstream; a header the upstream credential sets is overwritten,
# never removed and re-added.
CLIENT_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "api-key")
REPLY_DETAILS = "aoai_gateway_reply"
MAX_METADATA_NAME = 256
IMAGE_DEPLOYMENT_HEADER = "x-ms-oai-image-generation-deployment"  # Azure's: the image tool's deployment


# A mode override replaces the whole mode (unset header modes mean SEND): spell every field out.
# Request trailers: SKIP where the override comes with the RPC's last answer (nothing more is wanted,
# and a SEND would hold the trailers for a stream that is ending); SEND with the CONTINUE, so that a
# request of headers and trailers alone is answered whatever the Envoy config says.
def _request_mode(body: int, trailers: int) -> ProcessingMode:
    return ProcessingMode(
        request_header_mode=ProcessingMode.SEND,
        request_body_mode=body,
        request_trailer_mode=trailers,
        response_header_mode=ProcessingMode.SKIP,
        response_body_mode=ProcessingMode.NONE,
        response_trailer_mode=ProcessingMode.SKIP,
    )


_STREAM_BODY_MODE = _request_mode(ProcessingMode.NONE, ProcessingMode.SKIP)
_BUFFER_BODY_MODE = _request_mode(ProcessingMode.BUFFERED, ProcessingMode.SEND)
CONTINUE_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=_BUFFER_BODY_MODE)
CONTINUE_BYTES = CONTINUE_HEADERS.SerializeToString()
_JSON_CONTENT_TYPE = HeaderValueOption(header=HeaderValue(key="content-type", raw_value=b"application/json"))


def _encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def request_head(headers: pb.HttpHeaders) -> RequestHead:
    """Pick the few headers the core reads, in one pass (Envoy's forward_rules send only these).
    Each attribute read of a protobuf message costs about a microsecond here: each is read once."""
    method = path = content_type = authorization = api_key = image_deployment = proxy_authorization = ""
    content_length = -1
    for header in headers.headers.headers:
        key = header.key
        raw = header.raw_value
        value = raw.decode("utf-8", "surrogateescape")
        if key == ":path":
            path = value
        elif key == ":method":
            method = value
        elif key == "content-type":
            content_type = value
        elif key == "authorization":
            authorization = value
        elif key == "api-key":
            api_key = value
        elif key == "content-length" and raw.isdigit():  # Envoy has checked it is one number
            content_length = int(raw)
        elif key == IMAGE_DEPLOYMENT_HEADER:  # twice: both reach Azure, so both are checked (a list is no name)
            image_deployment = image_deployment + "," + value if image_deployment else value
        elif key == "proxy-authorization":  # only a CONNECT's reaches here (forward-proxy mode)
            # Twice: neither is taken (joined, they are no credential: 407), whichever comes first.
            proxy_authorization = proxy_authorization + "," + value if proxy_authorization else value
    return RequestHead(method, path, content_type, authorization, api_key, not headers.end_of_stream, content_length,
                       image_deployment, proxy_authorization)


def _header(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, raw_value=_encode(value)))


def _metadata(forward: Forward) -> Struct:
    """Envoy's dynamic metadata for the request: aoai.request {model, deployment, backend, client} (what it is for:
    the access logs and the usage process read it), and for a pool {aoai.pool.<member id>: {path, headers: [[name,
    value], ...]}} for the pool cluster's upstream filter. Answers without a new body are serialized once
    (processor/call.py's cache): this is built once per distinct forward, not per request."""
    about = {name: _text(value) for name, value in (("model", forward.model), ("deployment", forward.deployment),
                                                  ("backend", forward.backend), ("client", forward.client)) if value}
    metadata = Struct()
    metadata.update({
        REQUEST_METADATA_NAMESPACE: about,
        **{POOL_METADATA_NAMESPACE + attempt.member: {
            "path": attempt.path, "headers": [[name, value] for name, value in attempt.credential]}
           for attempt in forward.tries},
    })
    return metadata


def _text(value: str) -> str:
    """A name as metadata may hold it (valid UTF-8, bounded, no control characters: the usage process reads the
    access log's tab-separated fields): a client's model name may be anything."""
    if len(value) > MAX_METADATA_NAME:
        value = value[:MAX_METADATA_NAME]
    if value.isascii() and value.isprintable():
        return value
    value = value.encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c.isprintable() else "?" for c in value)


def _common_response(forward: Forward) -> pb.CommonResponse:
    # An Authorization of the gateway's own (Entra ID) goes by another name past the filter that removes the
    # client's, which then sets it (envoy/envoy.yaml); any other credential header is set as it is.
    credential = [(UPSTREAM_AUTHORIZATION_HEADER if name == "authorization" else name, value)
                  for name, value in forward.credential]
    credential_names = {name for name, _ in credential}
    set_headers = [_header(":path", forward.path)]
    set_headers += [_header(name, value) for name, value in credential]
    set_headers.append(_header(ROUTE_HEADER, forward.cluster))
    if forward.authority:  # bring your own key: the resource Envoy's dynamic forward proxy connects to
        set_headers.append(_header(":authority", forward.authority))
    if forward.client:
        set_headers.append(_header(CLIENT_HEADER, forward.client))
    if forward.max_retries is not None:  # read by Envoy's router; the pool's upstream Lua removes it
        set_headers.append(_header("x-envoy-max-retries", str(forward.max_retries)))
    removed = [name for name in CLIENT_CREDENTIAL_HEADERS if name not in credential_names]
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=removed),
        clear_route_cache=True,  # the route is chosen again, now matching the routing header
    )
    if forward.body is not None:
        common.header_mutation.set_headers.append(
            HeaderValueOption(header=HeaderValue(key="content-length", raw_value=str(len(forward.body)).encode()))
        )
        common.body_mutation.body = forward.body
    return common


def reply_response(reply: Reply) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=HttpStatus(code=reply.status),  # type: ignore[arg-type]
            headers=pb.HeaderMutation(set_headers=[_JSON_CONTENT_TYPE, *(_header(k, v) for k, v in reply.headers)]),
            body=reply.body,
            details=REPLY_DETAILS,
        )
    )
    if reply.client:  # whose request was refused (a token limit, a model the key may not use)
        response.dynamic_metadata.update({REQUEST_METADATA_NAMESPACE: {"client": reply.client}})
    return response


def tunnel_response(tunnel: Tunnel) -> pb.ProcessingResponse:
    """A CONNECT goes on to the route Envoy chose, without its Proxy-Authorization, and logged with the key's name."""
    response = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=pb.CommonResponse(
        header_mutation=pb.HeaderMutation(remove_headers=["proxy-authorization"]))))
    response.dynamic_metadata.update({REQUEST_METADATA_NAMESPACE: {"client": _text(tunnel.client)}})
    return response


def headers_forward_response(forward: Forward, has_body: bool) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=_common_response(forward)),
                                     dynamic_metadata=_metadata(forward))
    if has_body:
        # Decided without the body: let it stream upstream instead of buffering it here.
        response.mode_override.CopyFrom(_STREAM_BODY_MODE)
    return response


def body_forward_response(forward: Forward) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse(request_body=pb.BodyResponse(response=_common_response(forward)),
                                     dynamic_metadata=_metadata(forward))
    return response
