"""OpenAI-shaped error bodies for every error the proxy itself produces.

Clients written for the OpenAI API parse `{"error": {"message", "type", "param", "code"}}`;
anything else (an empty 502, a text/plain 413) surfaces as an opaque exception in their SDK.
"""

from __future__ import annotations

import math
from dataclasses import replace

import orjson

from ..auth.client import authorization_scheme
from .decision import Reply

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
SERVER_ERROR = "server_error"


def error(
    status: int,
    message: str,
    *,
    type: str = INVALID_REQUEST,  # noqa: A002 - the field's name in OpenAI's schema
    param: str | None = None,
    code: str | None = None,
) -> Reply:
    """An error the gateway answers itself, without calling upstream."""
    return Reply(status, error_body(message, type=type, param=param, code=code))


def error_body(
    message: str,
    *,
    type: str = INVALID_REQUEST,  # noqa: A002
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    try:
        return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})
    except TypeError:  # a lone surrogate from the client's path or model: shown as `\udcff` text
        message = message.encode("utf-8", "backslashreplace").decode()
        return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


# The proxy's fixed errors, built once.
INVALID_JSON = error(
    400,
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON.)",
)
MISSING_MODEL = error(400, "you must provide a model parameter", param="model")
# Two `model`s: parsers disagree on which one counts (first or last), so the gateway could check one
# model while Azure serves the other. Refused rather than guessed.
DUPLICATE_MODEL = error(
    400,
    "The request gives the `model` parameter more than once (or spelled in another case, such as `Model`); "
    "give it exactly once, as `model`.",
    param="model",
)
# Two `stream_options` in a streamed request the gateway adds `include_usage` to (`usage.include_stream_usage`):
# parsers differ on which counts, so the one written could be the one Azure ignores.
DUPLICATE_STREAM_OPTIONS = error(
    400,
    "The request gives the `stream_options` parameter more than once; give it exactly once.",
    param="stream_options",
)
MODEL_NOT_STRING = error(400, "The `model` parameter must be a string.", param="model")
MODEL_NOT_TEXT = error(
    400, "The `model` parameter is not valid Unicode text (it has a lone surrogate escape).", param="model"
)
INVALID_MULTIPART = error(
    400, "We could not parse the multipart/form-data body of your request."
)
MISSING_API_KEY = error(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). This proxy holds no Azure key of its own.",
    type=INVALID_REQUEST,
)


CLIENT_KEY_MISSING = error(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an api-key header. Ask this gateway's operator "
    "for a key.",
    code="invalid_api_key",
)
CLIENT_KEY_UNKNOWN = error(
    401,
    "Incorrect API key provided. Ask this gateway's operator for a key.",  # never any part of the key
    code="invalid_api_key",
)
# Forward-proxy mode with client keys: a CONNECT must carry one (clients send it for a proxy URL with a user).
PROXY_KEY_MISSING = replace(error(
    407,
    "This gateway's forward proxy needs a client key on the CONNECT: set the proxy URL as "
    "http://NAME:KEY@HOST:PORT (HTTPS_PROXY), or send Proxy-Authorization: Bearer KEY. Ask this gateway's operator "
    "for a key.",
    code="invalid_api_key",
), headers=(("proxy-authenticate", 'Basic realm="aoai-gateway"'),))
PROXY_KEY_UNKNOWN = replace(error(
    407,
    "Incorrect API key provided in Proxy-Authorization. Ask this gateway's operator for a key.",
    code="invalid_api_key",
), headers=(("proxy-authenticate", 'Basic realm="aoai-gateway"'),))
NOT_FOR_RESTRICTED_KEYS = error(
    403,
    "This API key may use only some models; files, batches and requests in Azure's own form that name no "
    "deployment are not available to it.",
    code="model_not_allowed",
)


def byok_malformed(problem: str) -> Reply:
    """A bearer token shaped like a bring-your-own-key one (it has a `:`) that is not one."""
    return error(401, f"Incorrect bring-your-own-key API key: {problem}. (The key is not shown.)",
                 code="invalid_api_key")


BYOK_ENDPOINTS_ONLY = error(
    404,
    "With a bring-your-own-key API key (RESOURCE:DEPLOYMENT:KEY) the gateway serves the endpoints that name a "
    "model in the body (chat/completions, completions, embeddings, audio, images, responses).",
)


def upstream_auth_unavailable(kind: str) -> Reply:
    """The gateway holds no valid Entra ID token for the backend (the token process's log says why)."""
    return error(
        503,
        f"The gateway could not get an Entra ID token for Azure ({kind}); nothing was sent to Azure. "
        "Try again shortly; the gateway's log says what failed.",
        type="server_error",
        code="upstream_auth_unavailable",
    )


def missing_api_key(authorization: str) -> Reply:
    """The 401 for a request with no key to send upstream, saying what the client did send."""
    if authorization.strip():
        return unusable_authorization(authorization_scheme(authorization))
    return MISSING_API_KEY


def unusable_authorization(scheme: str) -> Reply:
    """A 401 for an `Authorization` header that is there but carries no Bearer token."""
    shown = scheme if scheme.isascii() and scheme.isprintable() and len(scheme) <= 32 else "another"
    return error(
        401,
        f"Your Authorization header uses the `{shown}` scheme, or has no token: send your API key as "
        "`Authorization: Bearer YOUR_KEY` (or in an `api-key` header). This proxy holds no Azure key of its own.",
        type=INVALID_REQUEST,
    )


def invalid_url(method: str, path: str) -> Reply:
    """OpenAI's own answer to an unknown path or method."""
    if method == "CONNECT":
        return CONNECT_REFUSED
    return error(404, f"Invalid URL ({_shown(method)} {_shown(path)})")


# A client configured with this gateway as its HTTPS_PROXY: say so instead of `Invalid URL (CONNECT )`.
CONNECT_REFUSED = error(
    404,
    "This gateway is not a forward proxy: CONNECT is not supported. Point the client's base URL at it "
    "instead (OPENAI_BASE_URL=http://HOST:PORT/v1) rather than setting HTTPS_PROXY.",
)


MAX_SHOWN = 256  # a name echoed in an error is cut here: errors (and logs) stay small


def _shown(name: str) -> str:
    return name if len(name) <= MAX_SHOWN else name[:MAX_SHOWN] + "…"


MODEL_TOO_LONG = error(400, "The `model` parameter is too long (over 256 characters).", param="model")
TOO_MANY_MEMBERS = error(
    400, "The request body is too large a structure to check: over 1,000 top-level members, 1,000,000 items, or "
    "200,000 nested arrays and objects.")
TOO_MANY_PARTS = error(400, "The multipart/form-data body has too many parts.")


def not_a_deployment_name(model: str) -> Reply:
    """A model whose deployment name (passthrough, strip_dots) Azure could not have: as good as unknown."""
    return error(
        404,
        f"The model `{_shown(model)}` does not name an Azure deployment: deployment names are 1-64 letters, "
        "digits, `-`, `_` and `.`.",
        param="model",
        code="model_not_found",
    )


def pool_needs_one_deployment(model: str) -> Reply:
    """A pool whose members name different deployments, on an endpoint whose body names the deployment."""
    return error(
        400,
        f"The model `{_shown(model)}` is served by a pool whose members have different deployment names, and this "
        "endpoint carries the deployment name in the request body, which stays the same when the gateway fails "
        "over: give the pool's members one deployment name to use this endpoint with it.",
        param="model",
        code="unsupported_for_pool",
    )


def pool_tripped(model: str, wait_seconds: float) -> Reply:
    """Every member of the model's pool is tripped: Azure is not called; the SDKs wait and retry."""
    reply = error(
        429,
        f"Every deployment serving the model `{_shown(model)}` is rate limited or failing; the first is expected "
        f"back in {math.ceil(wait_seconds)} seconds. Please retry after that.",
        type="requests",
        code="rate_limit_exceeded",
    )
    return Reply(reply.status, reply.body, (("retry-after", str(math.ceil(wait_seconds))),
                                            ("retry-after-ms", str(math.ceil(wait_seconds * 1000)))))


def token_limit_reached(client: str, window: str, wait_seconds: float) -> Reply:
    """The client key has spent its tokens_per_minute or tokens_per_day: Azure is not called."""
    wait = max(1, math.ceil(wait_seconds))
    reply = error(
        429,
        f"The client key `{client}` has used its tokens per {window} (clients.keys[].tokens_per_{window}). "
        f"Please retry after {wait} seconds.",
        type="tokens",
        code="rate_limit_exceeded",
    )
    return Reply(reply.status, reply.body, (("retry-after", str(wait)), ("retry-after-ms", str(wait * 1000))))


def method_not_allowed(method: str, path: str) -> Reply:
    return error(405, f"Method {_shown(method)} is not allowed on {_shown(path)}: use GET, POST or DELETE.")


def request_too_large(length: int, limit: int) -> Reply:
    return error(
        413,
        f"The request body ({length} bytes) is larger than this proxy's limit of {limit} bytes "
        "(limits.max_request_body_bytes).",
        code="request_too_large",
    )


def body_not_object(kind: str) -> Reply:
    """The body is valid JSON but not an object; `kind` names what it is (an array, a string, ...)."""
    return error(400, f"The request body must be a JSON object ({{...}}), not {kind}.")


def model_not_found(model: str, known: tuple[str, ...]) -> Reply:
    return _not_found("model", model, "Models", known)


def deployment_not_found(deployment: str, known: tuple[str, ...]) -> Reply:
    """An Azure-form request (/openai/deployments/X/...) for a deployment outside the model map,
    under `unmapped_models: reject`: the same refusal as for an unknown model."""
    return _not_found("deployment", deployment, "Deployments", known)


def _not_found(what: str, name: str, known_label: str, known: tuple[str, ...]) -> Reply:
    names = ", ".join(known) if known else "none are configured"
    return error(
        404,
        f"The {what} `{_shown(name)}` does not exist or you do not have access to it. "
        f"{known_label} known to this proxy: {names}.",
        param="model",
        code="model_not_found",
    )
