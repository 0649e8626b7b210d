"""The translation core as pure functions: request head (+ body) in, decision out."""

from __future__ import annotations

import orjson
import pytest

from extproc.config import Settings, load_settings
from extproc.decision import AwaitBody, Forward, Reply, RequestHead
from extproc.translate import Translator, merge_query

SERVER_KEY = "server-secret"


def make(env: dict[str, str] | None = None, **overrides: object) -> Translator:
    base = {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com", "AZURE_OPENAI_API_KEY": SERVER_KEY}
    settings = load_settings(env={**base, **(env or {})})
    if overrides:
        settings = Settings.model_validate({**settings.model_dump(), **overrides})
    return Translator(settings)


def post(translator: Translator, path: str, body: bytes, content_type: str = "application/json", **head: str):
    decision = translator.on_headers(RequestHead("POST", path, content_type, has_body=True, **head))
    assert isinstance(decision, AwaitBody), decision
    return decision.finish(body)


def chat(model: str = "gpt-4o") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


def error_of(reply: Reply) -> dict:
    return orjson.loads(reply.body)["error"]


@pytest.mark.parametrize(
    "operation",
    ["chat/completions", "completions", "embeddings", "audio/speech", "images/generations", "images/edits"],
)
def test_json_deployment_operations_map_to_the_deployment_path(operation: str) -> None:
    translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'})
    decision = post(translator, f"/v1/{operation}", chat())
    assert decision == Forward(f"/openai/deployments/prod-4o/{operation}?api-version=2024-10-21", SERVER_KEY, "azure")


def test_the_body_is_never_echoed_on_the_classic_surface() -> None:
    decision = post(make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}), "/v1/chat/completions", chat())
    assert isinstance(decision, Forward) and decision.body is None


def test_deployment_names_are_url_escaped() -> None:
    translator = make({"AZURE_MODEL_MAP": '{"m": "my dep/ä?#"}'})
    decision = post(translator, "/v1/chat/completions", chat("m"))
    assert decision.path == "/openai/deployments/my%20dep%2F%C3%A4%3F%23/chat/completions?api-version=2024-10-21"


def test_client_query_is_kept_and_api_version_set_once() -> None:
    decision = post(make(), "/v1/chat/completions?foo=1&api-version=1999-01-01&bar=a%20b", chat())
    assert decision.path == "/openai/deployments/gpt-4o/chat/completions?foo=1&bar=a%20b&api-version=2024-10-21"


def test_merge_query_handles_encoded_api_version_key() -> None:
    assert merge_query("api%2Dversion=x&y=2", "2024-10-21") == "?y=2&api-version=2024-10-21"
    assert merge_query("", None) == ""
    assert merge_query("a=1", None) == "?a=1"


def test_configured_and_per_endpoint_api_versions() -> None:
    translator = make({"AZURE_OPENAI_APIVERSION": "2024-06-01"},
                      endpoints={"embeddings": {"api_version": "2025-01-01-preview"}})
    assert post(translator, "/v1/chat/completions", chat()).path.endswith("?api-version=2024-06-01")
    assert post(translator, "/v1/embeddings", chat()).path.endswith("?api-version=2025-01-01-preview")
    # An older global version must not break the Responses API, which needs a preview version.
    assert post(translator, "/v1/responses", chat()).path == "/openai/responses?api-version=2025-04-01-preview"


class TestModelPolicies:
    def test_passthrough_uses_the_name_as_deployment(self) -> None:
        assert post(make(), "/v1/chat/completions", chat("gpt-3.5-turbo")).path.startswith(
            "/openai/deployments/gpt-3.5-turbo/")

    def test_strip_dots_like_the_go_proxy(self) -> None:
        translator = make({"AOAI_GATEWAY_UNMAPPED_MODELS": "strip_dots"})
        assert post(translator, "/v1/chat/completions", chat("gpt-3.5-turbo:0301")).path.startswith(
            "/openai/deployments/gpt-35-turbo0301/")

    def test_explicit_map_wins_over_policy(self) -> None:
        translator = make({"AOAI_GATEWAY_UNMAPPED_MODELS": "reject", "AZURE_OPENAI_MODEL_MAPPER": "gpt-4o=prod"})
        assert post(translator, "/v1/chat/completions", chat("gpt-4o")).path.startswith("/openai/deployments/prod/")

    def test_reject_names_the_known_models(self) -> None:
        translator = make({"AOAI_GATEWAY_UNMAPPED_MODELS": "reject", "AZURE_OPENAI_MODEL_MAPPER": "b=x,a=y"})
        reply = post(translator, "/v1/chat/completions", chat("gpt-5"))
        assert isinstance(reply, Reply) and reply.status == 404
        error = error_of(reply)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "`gpt-5`" in error["message"] and "a, b" in error["message"]


class TestBadBodies:
    @pytest.mark.parametrize("body", [b"{bad", b"", b"\xff\xfe", b'{"model": "x",}'])
    def test_invalid_json_is_400(self, body: bytes) -> None:
        reply = post(make(), "/v1/chat/completions", body)
        assert reply.status == 400 and "could not parse the JSON body" in error_of(reply)["message"]

    def test_body_must_be_an_object(self) -> None:
        reply = post(make(), "/v1/chat/completions", b"[1, 2]")
        assert reply.status == 400 and error_of(reply)["type"] == "invalid_request_error"

    @pytest.mark.parametrize("body", [b"{}", b'{"model": null}', b'{"model": ""}'])
    def test_missing_model_is_400(self, body: bytes) -> None:
        reply = post(make(), "/v1/embeddings", body)
        assert reply.status == 400
        assert error_of(reply) == {"message": "you must provide a model parameter", "type": "invalid_request_error",
                                   "param": "model", "code": None}

    def test_non_string_model_is_400(self) -> None:
        reply = post(make(), "/v1/embeddings", b'{"model": 4}')
        assert reply.status == 400 and error_of(reply)["param"] == "model"

    def test_audio_transcription_requires_multipart(self) -> None:
        reply = post(make(), "/v1/audio/transcriptions", chat("whisper"))
        assert reply.status == 400 and "multipart" in error_of(reply)["message"]


def multipart(fields: list[tuple[str, bytes, str | None]], boundary: str = "b0undary") -> tuple[bytes, str]:
    parts = []
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class TestMultipart:
    @pytest.mark.parametrize("operation", ["audio/transcriptions", "audio/translations", "images/edits"])
    def test_model_is_the_form_field(self, operation: str) -> None:
        body, content_type = multipart([("file", b"RIFF\x00model=whisper\r\n", "a.wav"), ("model", b"whisper-1", None)])
        decision = post(make({"AZURE_MODEL_MAP": '{"whisper-1": "stt"}'}), f"/v1/{operation}", body, content_type)
        assert decision == Forward(f"/openai/deployments/stt/{operation}?api-version=2024-10-21", SERVER_KEY, "azure")

    def test_a_file_named_model_is_not_the_model(self) -> None:
        body, content_type = multipart([("model", b"not-a-field", "model.txt"), ("model", b"whisper-1", None)])
        assert post(make(), "/v1/audio/transcriptions", body, content_type).path.startswith(
            "/openai/deployments/whisper-1/")

    def test_missing_model_field_is_400(self) -> None:
        body, content_type = multipart([("file", b"x", "a.wav")])
        reply = post(make(), "/v1/audio/transcriptions", body, content_type)
        assert reply.status == 400 and error_of(reply)["param"] == "model"

    def test_malformed_multipart_is_400(self) -> None:
        reply = post(make(), "/v1/audio/transcriptions", b"garbage", "multipart/form-data; boundary=zz")
        assert reply.status == 400 and "multipart" in error_of(reply)["message"]

    def test_v1_api_rewrites_the_model_field_in_place(self) -> None:
        translator = make({"AZURE_MODEL_MAP": '{"whisper-1": "stt-deployment"}'},
                          endpoints={"audio/transcriptions": {"api": "v1"}})
        body, content_type = multipart([("file", b"\x00\x01", "a.wav"), ("model", b"whisper-1", None), ("language", b"en", None)])
        decision = post(translator, "/v1/audio/transcriptions", body, content_type)
        assert decision.path == "/openai/v1/audio/transcriptions"
        assert decision.body == body.replace(b"whisper-1", b"stt-deployment")


class TestResourceLevel:
    def test_responses_create_maps_the_body_model(self) -> None:
        translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'})
        decision = post(translator, "/v1/responses", b'{"model":"gpt-4o","input":"hi","temperature":0.1}')
        assert decision.path == "/openai/responses?api-version=2025-04-01-preview"
        assert decision.body == b'{"model":"prod-4o","input":"hi","temperature":0.1}'

    def test_responses_body_untouched_when_names_agree(self) -> None:
        assert post(make(), "/v1/responses", b'{"model":"gpt-4o","input":"hi"}').body is None

    @pytest.mark.parametrize(
        ("method", "path", "azure"),
        [
            ("GET", "/v1/responses/resp_1", "/openai/responses/resp_1?api-version=2025-04-01-preview"),
            ("DELETE", "/v1/responses/resp_1", "/openai/responses/resp_1?api-version=2025-04-01-preview"),
            ("GET", "/v1/responses/resp_1/input_items?limit=2", "/openai/responses/resp_1/input_items?limit=2&api-version=2025-04-01-preview"),
            ("POST", "/v1/files", "/openai/files?api-version=2024-10-21"),
            ("GET", "/v1/files/file-1/content", "/openai/files/file-1/content?api-version=2024-10-21"),
            ("POST", "/v1/batches", "/openai/batches?api-version=2024-10-21"),
            ("POST", "/v1/batches/b1/cancel", "/openai/batches/b1/cancel?api-version=2024-10-21"),
        ],
    )
    def test_forwarded_from_the_headers_alone(self, method: str, path: str, azure: str) -> None:
        decision = make().on_headers(RequestHead(method, path, has_body=method == "POST"))
        assert decision == Forward(azure, SERVER_KEY, "azure")

    def test_v1_surface_for_resource_endpoints(self) -> None:
        translator = make(endpoints={"files": {"api": "v1"}, "responses": {"api": "v1"}})
        assert translator.on_headers(RequestHead("GET", "/v1/files?purpose=batch")).path == "/openai/v1/files?purpose=batch"
        decision = post(translator, "/v1/responses", b'{"model":"gpt-4o","input":"x"}')
        assert decision.path == "/openai/v1/responses" and decision.body is None

    def test_v1_chat_puts_the_deployment_in_the_body(self) -> None:
        translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}, endpoints={"chat/completions": {"api": "v1"}})
        decision = post(translator, "/v1/chat/completions?x=1", chat())
        assert decision.path == "/openai/v1/chat/completions?x=1"
        assert orjson.loads(decision.body)["model"] == "prod-4o"


class TestAzureFormPassthrough:
    def test_azure_form_passes_through_with_the_key(self) -> None:
        path = "/openai/deployments/dep/chat/completions?api-version=2024-06-01"
        assert make().on_headers(RequestHead("POST", path, has_body=True)) == Forward(path, SERVER_KEY, "azure")

    def test_missing_api_version_gets_the_default(self) -> None:
        decision = make().on_headers(RequestHead("POST", "/openai/deployments/dep/embeddings", has_body=True))
        assert decision.path == "/openai/deployments/dep/embeddings?api-version=2024-10-21"

    def test_v1_surface_needs_no_api_version(self) -> None:
        assert make().on_headers(RequestHead("GET", "/openai/v1/models")).path == "/openai/v1/models"


class TestCredentials:
    def test_server_key_replaces_client_credentials(self) -> None:
        decision = make().on_headers(RequestHead("GET", "/v1/files", authorization="Bearer client", api_key="c2"))
        assert decision.api_key == SERVER_KEY

    def test_without_server_key_the_bearer_token_becomes_api_key(self) -> None:
        translator = Translator(load_settings(env={"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}))
        assert translator.on_headers(RequestHead("GET", "/v1/files", authorization="Bearer tok")).api_key == "tok"
        assert translator.on_headers(RequestHead("GET", "/v1/files", api_key="azure-style")).api_key == "azure-style"

    def test_without_any_key_the_client_gets_401(self) -> None:
        translator = Translator(load_settings(env={"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}))
        reply = translator.on_headers(RequestHead("POST", "/v1/chat/completions", has_body=True))
        assert isinstance(reply, Reply) and reply.status == 401


class TestModelsAndUnknownPaths:
    def test_models_list_from_config(self) -> None:
        reply = make({"AZURE_MODEL_MAP": '{"gpt-4o": "a", "o3": "b"}'}).on_headers(RequestHead("GET", "/v1/models"))
        listing = orjson.loads(reply.body)
        assert reply.status == 200 and listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == ["gpt-4o", "o3"]
        assert all(m["object"] == "model" and isinstance(m["created"], int) for m in listing["data"])

    def test_one_model(self) -> None:
        translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "a"}'})
        assert orjson.loads(translator.on_headers(RequestHead("GET", "/v1/models/gpt-4o")).body)["id"] == "gpt-4o"
        missing = translator.on_headers(RequestHead("GET", "/v1/models/nope"))
        assert missing.status == 404 and error_of(missing)["code"] == "model_not_found"

    @pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nope"), ("GET", "/v1/chat/completions"),
                                                  ("POST", "/v2/chat/completions"), ("PUT", "/v1/files"),
                                                  ("GET", "/"), ("POST", "/v1/models")])
    def test_anything_else_is_an_openai_404(self, method: str, path: str) -> None:
        reply = make().on_headers(RequestHead(method, path))
        assert isinstance(reply, Reply) and reply.status == 404
        assert error_of(reply) == {"message": f"Invalid URL ({method} {path})", "type": "invalid_request_error",
                                   "param": None, "code": None}
