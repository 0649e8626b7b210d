"""OpenAI-shaped error bodies for every error the proxy itself produces.

Clients written for the OpenAI API parse `{"error": {"message", "type", "param", "code"}}`;
anything else (an empty 502, a text/plain 413) surfaces as an opaque exception in their SDK.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
SERVER_ERROR = "server_error"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error the proxy answers itself, without calling Azure."""

    status: int
    body: bytes

    @classmethod
    def build(
        cls,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,  # noqa: A002 - the field's name in OpenAI's schema
        param: str | None = None,
        code: str | None = None,
    ) -> ErrorReply:
        return cls(status, error_body(message, type=type, param=param, code=code))


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
INVALID_JSON = ErrorReply.build(
    400,
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON.)",
)
MISSING_MODEL = ErrorReply.build(400, "you must provide a model parameter", param="model")
# Two `model`s: parsers disagree on which one counts (first or last), so the gateway could check one
# model while Azure serves the other. Refused rather than guessed.
DUPLICATE_MODEL = ErrorReply.build(
    400,
    "The request gives the `model` parameter more than once (or spelled in another case, such as `Model`); "
    "give it exactly once, as `model`.",
    param="model",
)
MODEL_NOT_STRING = ErrorReply.build(400, "The `model` parameter must be a string.", param="model")
MODEL_NOT_TEXT = ErrorReply.build(
    400, "The `model` parameter is not valid Unicode text (it has a lone surrogate escape).", param="model"
)
INVALID_MULTIPART = ErrorReply.build(
    400, "We could not parse the multipart/form-data body of your request."
)
MISSING_API_KEY = ErrorReply.build(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). This proxy holds no Azure key of its own.",
    type=INVALID_REQUEST,
)


def invalid_url(method: str, path: str) -> ErrorReply:
    """OpenAI's own answer to an unknown path or method."""
    return ErrorReply.build(404, f"Invalid URL ({method} {path})")


def body_not_object(kind: str) -> ErrorReply:
    """The body is valid JSON but not an object; `kind` names what it is (an array, a string, ...)."""
    return ErrorReply.build(400, f"The request body must be a JSON object ({{...}}), not {kind}.")


def model_not_found(model: str, known: tuple[str, ...]) -> ErrorReply:
    return _not_found("model", model, "Models", known)


def deployment_not_found(deployment: str, known: tuple[str, ...]) -> ErrorReply:
    """An Azure-form request (/openai/deployments/X/...) for a deployment outside the model map,
    under `unmapped_models: reject`: the same refusal as for an unknown model."""
    return _not_found("deployment", deployment, "Deployments", known)


def _not_found(what: str, name: str, known_label: str, known: tuple[str, ...]) -> ErrorReply:
    names = ", ".join(known) if known else "none are configured"
    return ErrorReply.build(
        404,
        f"The {what} `{name}` does not exist or you do not have access to it. "
        f"{known_label} known to this proxy: {names}.",
        param="model",
        code="model_not_found",
    )
