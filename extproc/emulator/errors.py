"""Azure OpenAI's error bodies (and OpenAI's, for `openai_api` mode), raised as exceptions
and rendered by the middleware."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .jsonio import json_response

UNAUTHORIZED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your resource."
)
DEPLOYMENT_NOT_FOUND_MESSAGE = (
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again."
)


class AzureError(Exception):
    """An error response; handlers raise it anywhere and the middleware renders it."""

    def __init__(self, status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {error.get('message')}")
        self.status = status
        self.error = error
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_response({"error": self.error}, status=self.status, headers=self.headers)


def unauthorized() -> AzureError:
    return AzureError(401, {"code": "401", "message": UNAUTHORIZED_MESSAGE})


# What Azure OpenAI answers for a bearer token it does not accept.
TOKEN_UNAUTHORIZED_MESSAGE = ("Unauthorized. Access token is missing, invalid, audience is incorrect "
                              "(https://cognitiveservices.azure.com), or have expired.")


def token_unauthorized() -> AzureError:
    return AzureError(401, {"code": "401", "message": TOKEN_UNAUTHORIZED_MESSAGE})


def local_auth_disabled() -> AzureError:
    return AzureError(403, {"code": "AuthenticationTypeDisabled",
                            "message": "Key based authentication is disabled for this resource."})


def resource_not_found() -> AzureError:
    return AzureError(404, {"code": "404", "message": "Resource not found"})


def deployment_not_found() -> AzureError:
    return AzureError(404, {"code": "DeploymentNotFound", "message": DEPLOYMENT_NOT_FOUND_MESSAGE})


def bad_request(message: str) -> AzureError:
    """Azure's gateway-level 400 (unparseable bodies, unsupported versions...)."""
    return AzureError(400, {"code": "BadRequest", "message": message, "param": None, "type": None})


def invalid_request(message: str, param: str | None, code: str | None = None, status: int = 400) -> AzureError:
    """The model service's 400: OpenAI-shaped, with `code` usually null."""
    return AzureError(
        status, {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    )


def missing_field(name: str) -> AzureError:
    return invalid_request(f"'{name}' is a required property", param=name)


def not_found(message: str) -> AzureError:
    return invalid_request(message, param=None, status=404)


def operation_not_supported(operation: str, model: str) -> AzureError:
    message = (
        f"The {operation} operation does not work with the specified model, {model}. Please choose "
        "different model and try again. You can learn more about which models can be used with each "
        "operation here: https://go.microsoft.com/fwlink/?linkid=2197993."
    )
    return AzureError(400, {"code": "OperationNotSupported", "message": message})


def payload_too_large() -> AzureError:
    return AzureError(413, {"code": "RequestEntityTooLarge", "message": "The request entity is too large."})


def unsupported_content_encoding(encoding: str) -> AzureError:
    """Azure OpenAI documents no request compression; RFC 9110 answers an unknown coding with 415."""
    message = (
        f"Content-Encoding '{encoding}' is not supported: send the request body uncompressed "
        "(Content-Encoding: identity or no Content-Encoding header)."
    )
    return AzureError(415, {"code": "UnsupportedMediaType", "message": message}, {"Accept-Encoding": "identity"})


def expectation_failed() -> AzureError:
    return AzureError(
        417, {"code": "417", "message": "Expectation Failed: the only supported Expect value is 100-continue."}
    )


def internal_error() -> AzureError:
    return AzureError(500, {"code": "InternalServerError", "message": "The emulator failed."})


# OpenAI's own answers, for `EmulatorSettings.openai_api` (api.openai.com words them so).
NO_API_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username and password. You can "
    "obtain an API key from https://platform.openai.com/account/api-keys."
)


def _masked(key: str) -> str:
    """OpenAI quotes a wrong key masked (`sk-ab***yz`); a short one not at all."""
    return f"{key[:5]}***{key[-2:]}" if len(key) > 10 else "***"


def openai_unauthorized(key: str | None) -> AzureError:
    if not key:
        return invalid_request(NO_API_KEY_MESSAGE, param=None, status=401)
    message = (
        f"Incorrect API key provided: {_masked(key)}. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    return invalid_request(message, param=None, code="invalid_api_key", status=401)


def model_not_found(name: str) -> AzureError:
    return invalid_request(
        f"The model `{name}` does not exist or you do not have access to it.", None, "model_not_found", 404
    )


def missing_model() -> AzureError:
    return invalid_request("you must provide a model parameter", param="model")


def model_not_supported(name: str, operation: str) -> AzureError:
    """OpenAI's answer to a model the endpoint cannot run (Azure's is `OperationNotSupported`)."""
    return invalid_request(f"The model `{name}` does not support the {operation} operation.", param="model")


def invalid_url(method: str, path: str) -> AzureError:
    return invalid_request(f"Invalid URL ({method} {path})", param=None, status=404)
