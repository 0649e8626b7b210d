"""The translation core as pure functions: request head (+ body) in, decision out."""

from __future__ import annotations

import orjson
import pytest

from extproc.config import ConfigError, Settings, load_settings
from extproc.compile import compile_gateway
from extproc.core.decision import AwaitBody, Forward, Reply, RequestHead
from extproc.core.paths import merge_query
from extproc.core.translator import Translator

SERVER_KEY = "server-secret"
SERVER_CREDENTIAL = (("api-key", SERVER_KEY),)


def api_key(key: str) -> tuple[tuple[str, str], ...]:
    return (("api-key", key),)


def make(env: dict[str, str] | None = None, **overrides: object) -> Translator:
    base = {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com", "AZURE_OPENAI_API_KEY": SERVER_KEY}
    settings = load_settings(env={**base, **(env or {})})
    if overrides:
        settings = Settings.model_validate({**settings.model_dump(), **overrides})
    return Translator(compile_gateway(settings))


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
    assert decision == Forward(f"/openai/deployments/prod-4o/{operation}?api-version=2024-10-21", SERVER_CREDENTIAL, "azure",
                               model="gpt-4o", deployment="prod-4o", backend="default")


def test_the_body_is_never_echoed_on_the_classic_surface() -> None:
    decision = post(make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}), "/v1/chat/completions", chat())
    assert isinstance(decision, Forward) and decision.body is None


def test_deployment_names_azure_cannot_have_are_never_sent() -> None:
    """Azure's deployment names are 1-64 letters, digits, `-`, `_`, `.`: a name outside that (in the
    map: a config error; from passthrough or strip_dots: a 404) could only address something else."""
    with pytest.raises(ConfigError, match="not a deployment name"):
        make({"AZURE_MODEL_MAP": '{"m": "my dep/ä?#"}'})
    for policy in ("passthrough", "strip_dots"):
        translator = make({"AOAI_GATEWAY_UNMAPPED_MODELS": policy})
        dotted = (".hidden", "trailing.", "..", ".") if policy == "passthrough" else ("..", ".")  # strip_dots drops dots
        for model in ("../../openai/deployments/secret-dep/chat/completions?", "a b", "a%2Fb", "x\\y", "tab\t",
                      "ä", "a" * 65, *dotted):
            reply = post(translator, "/v1/chat/completions", chat(model))
            assert isinstance(reply, Reply) and reply.status == 404, (policy, model, reply)
            assert error_of(reply)["param"] == "model" and error_of(reply)["code"] == "model_not_found"
        assert post(translator, "/v1/chat/completions", chat("a" * 64)).path.startswith("/openai/deployments/" + "a" * 64)
    assert post(make(), "/v1/chat/completions", chat("m" * 257)).status == 400  # too long to be any name


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
        assert decision == Forward(f"/openai/deployments/stt/{operation}?api-version=2024-10-21", SERVER_CREDENTIAL, "azure",
                                   model="whisper-1", deployment="stt", backend="default")

    def test_a_file_named_model_is_refused(self) -> None:
        # Which one is the model, the file or the field? Readers differ: neither is guessed.
        body, content_type = multipart([("model", b"not-a-field", "model.txt"), ("model", b"whisper-1", None)])
        reply = post(make(), "/v1/audio/transcriptions", body, content_type)
        assert reply.status == 400 and "multipart" in error_of(reply)["message"]

    @pytest.mark.parametrize("disposition", [
        'form-data; name="model"; name="x"',  # python-multipart keeps the last name, .NET the first
        'form-data; name="x"; NAME="model"',
    ])
    def test_a_part_with_two_names_is_refused(self, disposition: str) -> None:
        body = (f"--b0undary\r\nContent-Disposition: {disposition}\r\n\r\nother\r\n"
                "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b0undary--\r\n").encode()
        reply = post(make(), "/v1/audio/transcriptions", body, "multipart/form-data; boundary=b0undary")
        assert reply.status == 400

    def test_a_part_with_two_dispositions_is_refused(self) -> None:
        body = (b'--b0undary\r\nContent-Disposition: form-data; name="x"\r\nContent-Disposition: form-data; name="model"'
                b'\r\n\r\nother\r\n--b0undary--\r\n')
        assert post(make(), "/v1/audio/transcriptions", body, "multipart/form-data; boundary=b0undary").status == 400

    def test_field_names_are_case_insensitive(self) -> None:
        body, content_type = multipart([("MODEL", b"other", None), ("model", b"whisper-1", None)])
        assert post(make(), "/v1/audio/transcriptions", body, content_type).status == 400  # twice
        body, content_type = multipart([("Model", b"whisper-1", None)])
        assert post(make(), "/v1/audio/transcriptions", body, content_type).path.startswith("/openai/deployments/whisper-1/")

    @pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=\u20ac", "multipart/form-data; boundary=\udcff"])
    def test_a_content_type_beyond_latin1_is_400_not_a_crash(self, content_type: str) -> None:
        body, _ = multipart([("model", b"whisper-1", None)])
        assert post(make(), "/v1/audio/transcriptions", body, content_type).status == 400

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
        assert decision == Forward(azure, SERVER_CREDENTIAL, "azure", backend="default")

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
        assert make().on_headers(RequestHead("POST", path, has_body=True)) == Forward(path, SERVER_CREDENTIAL, "azure",
                                                                                     deployment="dep", backend="default")

    def test_missing_api_version_gets_the_default(self) -> None:
        decision = make().on_headers(RequestHead("POST", "/openai/deployments/dep/embeddings", has_body=True))
        assert decision.path == "/openai/deployments/dep/embeddings?api-version=2024-10-21"

    def test_v1_surface_needs_no_api_version(self) -> None:
        assert make().on_headers(RequestHead("GET", "/openai/v1/models")).path == "/openai/v1/models"


class TestCredentials:
    def test_server_key_replaces_client_credentials(self) -> None:
        decision = make().on_headers(RequestHead("GET", "/v1/files", authorization="Bearer client", api_key="c2"))
        assert decision.credential == SERVER_CREDENTIAL

    def test_without_server_key_the_bearer_token_becomes_api_key(self) -> None:
        translator = Translator(compile_gateway(load_settings(env={"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"})))
        assert translator.on_headers(RequestHead("GET", "/v1/files", authorization="Bearer tok")).credential == api_key("tok")
        assert translator.on_headers(RequestHead("GET", "/v1/files", api_key="azure-style")).credential == api_key("azure-style")

    def test_without_any_key_the_client_gets_401(self) -> None:
        translator = Translator(compile_gateway(load_settings(env={"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"})))
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


# --- review fixes: JSON bodies stdlib json reads, exact rewrites, queries, multipart, reject ---------


class TestJsonOrjsonRefuses:
    """Valid JSON orjson refuses (or reads lossily) is forwarded, not answered with a 400."""

    @pytest.mark.parametrize(
        "body",
        [
            b'{"model": "gpt-4o", "seed": 123456789012345678901234567890}',  # beyond 64 bits
            b'{"model": "gpt-4o", "user": "\\ud800"}',  # a lone surrogate escape
            b'\xef\xbb\xbf{"model": "gpt-4o"}',  # a UTF-8 BOM
            b'{"model": "gpt-4o", "temperature": 1e400}',  # beyond a double
            b'{"model": "gpt-4o", "x": NaN}',  # stdlib json reads it: Azure decides
            '{"model": "gpt-4o"}'.encode("utf-16"),
            '{"model": "gpt-4o"}'.encode("utf-32-be"),
        ],
    )
    def test_forwarded_on_the_classic_surface(self, body: bytes) -> None:
        decision = post(make(), "/v1/chat/completions", body)
        assert decision == Forward("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", SERVER_CREDENTIAL, "azure",
                                   model="gpt-4o", deployment="gpt-4o", backend="default")

    @pytest.mark.parametrize("body", [b"\xef\xbb\xbf", b'{"model": "x"', b'{"a": 1' + b"1" * 5000 + b"}",
                                      b"[" * 100_000, b'{"model": "\xff"}'])
    def test_what_stdlib_json_refuses_too_is_400(self, body: bytes) -> None:
        reply = post(make(), "/v1/chat/completions", body)
        assert isinstance(reply, Reply) and reply.status == 400
        assert "could not parse the JSON body" in error_of(reply)["message"]

    @pytest.mark.parametrize(("body", "kind"), [(b"[1]", "an array"), (b'"x"', "a string"), (b"4", "a number"),
                                                (b"null", "null"), (b"true", "a boolean")])
    def test_a_top_level_non_object_is_400_naming_what_it_is(self, body: bytes, kind: str) -> None:
        reply = post(make(), "/v1/chat/completions", body)
        assert reply.status == 400
        assert error_of(reply) == {"message": f"The request body must be a JSON object ({{...}}), not {kind}.",
                                   "type": "invalid_request_error", "param": None, "code": None}


class TestExactRewrites:
    """A rewritten body differs from the client's only in the top-level model's value."""

    V1 = {"chat/completions": {"api": "v1"}}

    def rewrite(self, body: bytes, path: str = "/v1/chat/completions") -> Forward:
        translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}, endpoints=self.V1)
        decision = post(translator, path, body)
        assert isinstance(decision, Forward), decision
        return decision

    @pytest.mark.parametrize(
        "rest",
        [
            b'"seed": 123456789012345678901234567890, "n": -0, "t": 1.0, "u": 1E+2, "v": 1e400',
            b'"user": "\\ud800 \\u00e9 \\/ \\"q\\" \xc3\xa9", "x": NaN',
            b'"messages": [{"role": "user", "content": "{\\"model\\": \\"gpt-4o\\"}", "model": "gpt-4o"}]',
            b'"metadata": {"model": "gpt-4o", "nested": [[], {}, "]}"]}',
        ],
    )
    def test_only_the_model_value_changes(self, rest: bytes) -> None:
        body = b'{ "stream" : true,\n\t"model"  :  "gpt-4o" , ' + rest + b"}"
        decision = self.rewrite(body)
        assert decision.body == body.replace(b'"gpt-4o" ,', b'"prod-4o" ,', 1)
        assert decision.path == "/openai/v1/chat/completions"

    def test_responses_on_the_classic_surface_too(self) -> None:
        body = b'{"input": [{"model": "gpt-4o"}], "model": "gpt-4o", "max_output_tokens": 1.0}'
        decision = self.rewrite(body, "/v1/responses")
        assert decision.body == b'{"input": [{"model": "gpt-4o"}], "model": "prod-4o", "max_output_tokens": 1.0}'

    def test_an_escaped_key_and_value_are_found(self) -> None:
        decision = self.rewrite(b'{"mod\\u0065l": "gpt\\u002d4o", "a": 1}')
        assert decision.body == b'{"mod\\u0065l": "prod-4o", "a": 1}'

    def test_bom_and_encoding_are_kept(self) -> None:
        assert self.rewrite(b'\xef\xbb\xbf{"model":"gpt-4o"}').body == b'\xef\xbb\xbf{"model":"prod-4o"}'
        for encoding in ("utf-16", "utf-16-be", "utf-32", "utf-32-le"):
            body = '{"model": "gpt-4o", "x": "é"}'.encode(encoding)
            assert self.rewrite(body).body == '{"model": "prod-4o", "x": "é"}'.encode(encoding), encoding

    def test_a_non_ascii_value_is_escaped_in_the_splice(self) -> None:
        # Deployment names are ASCII (a non-ASCII one is a config error); the splice escapes all the same.
        from extproc.core.jsonbody import replace_top_level_string

        assert replace_top_level_string(b'{"model":"m"}', "model", "dép") == b'{"model":"d\\u00e9p"}'

    def test_duplicate_model_is_400_when_rewriting(self) -> None:
        translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}, endpoints=self.V1)
        for body in (b'{"model": "evil", "model": "gpt-4o"}', b'{"model": "gpt-4o", "mod\\u0065l": "gpt-4o"}'):
            reply = post(translator, "/v1/chat/completions", body)
            assert reply.status == 400 and error_of(reply)["param"] == "model"
            assert "more than once" in error_of(reply)["message"]

    @pytest.mark.parametrize("body", [
        b'{"model": "a", "model": "b"}',
        b'{"model": "a", "mod\\u0065l": "b"}',
        b'{"model": "a", "Model": "b"}',
        '{"model": "a", "model": "b"}'.encode("utf-16"),
    ])
    def test_duplicate_model_is_400_on_every_surface(self, body: bytes) -> None:
        # Also where no rewrite happens (classic surface, or a model mapped to itself on the v1 one):
        # the model checked must be the one Azure reads.
        identity = make({"AZURE_MODEL_MAP": '{"a": "a"}'}, endpoints={"chat/completions": {"api": "v1"}})
        for translator in (make(), identity):
            reply = post(translator, "/v1/chat/completions", body)
            assert isinstance(reply, Reply) and reply.status == 400, reply
            assert error_of(reply)["param"] == "model"

    def test_model_as_a_string_value_elsewhere_is_no_duplicate(self) -> None:
        body = b'{"model": "a", "messages": [{"role": "user", "content": "\\"model\\"", "model": "x"}]}'
        assert isinstance(post(make(), "/v1/chat/completions", body), Forward)

    def test_content_length_follows_the_new_body(self) -> None:
        from extproc.processor.messages import body_forward_response

        decision = self.rewrite('{"model":"gpt-4o","x":"ü"}'.encode())
        mutation = body_forward_response(decision).request_body.response.header_mutation
        lengths = [h.header.raw_value for h in mutation.set_headers if h.header.key == "content-length"]
        assert lengths == [str(len(decision.body)).encode()] and len(decision.body) == 28


class TestQueries:
    @pytest.mark.parametrize("key", ["API-Version", "Api-version", "API%2dVERSION", "api-version"])
    def test_the_clients_api_version_in_any_case_is_replaced(self, key: str) -> None:
        assert merge_query(f"a=1&{key}=1999-01-01&b=%2F+x", "2024-10-21") == "?a=1&b=%2F+x&api-version=2024-10-21"

    def test_other_parameters_keep_order_and_encoding(self) -> None:
        assert merge_query("z=1&x-api-version=2&a=%C3%A9&api-versions=3", "v") == \
            "?z=1&x-api-version=2&a=%C3%A9&api-versions=3&api-version=v"
        assert merge_query("api-version", None) == ""

    @pytest.mark.parametrize("query", ["x-api-version=1", "note=api-version=2", "x-api-version-note=1"])
    def test_azure_form_without_an_api_version_key_gets_the_default(self, query: str) -> None:
        decision = make().on_headers(RequestHead("GET", f"/openai/deployments/d/x?{query}"))
        assert decision.path == f"/openai/deployments/d/x?{query}&api-version=2024-10-21"

    @pytest.mark.parametrize("query", ["API-VERSION=2024-06-01", "a=1&Api-Version=2024-06-01"])
    def test_azure_form_keeps_the_clients_api_version_in_any_case(self, query: str) -> None:
        decision = make().on_headers(RequestHead("GET", f"/openai/deployments/d/x?{query}"))
        assert decision.path == f"/openai/deployments/d/x?{query}"


class TestMultipartHeaders:
    def test_media_type_and_parameter_names_are_case_insensitive(self) -> None:
        body, _ = multipart([("model", b"whisper-1", None)], boundary="b0undary")
        body = body.replace(b'name="model"', b'Name="model"')
        decision = post(make(), "/v1/audio/transcriptions", body, "Multipart/Form-Data; Boundary=b0undary")
        assert decision.path.startswith("/openai/deployments/whisper-1/audio/transcriptions?")

    def test_a_quoted_boundary_with_special_characters(self) -> None:
        body, _ = multipart([("model", b"whisper-1", None)], boundary="a b;c=d")
        decision = post(make(), "/v1/audio/transcriptions", body, 'multipart/form-data; boundary="a b;c=d"')
        assert decision.path.startswith("/openai/deployments/whisper-1/")

    @pytest.mark.parametrize("operation", ["audio/transcriptions", "images/edits"])
    def test_duplicate_model_field_is_400(self, operation: str) -> None:
        body, content_type = multipart([("model", b"whisper-1", None), ("file", b"x", "a.wav"), ("model", b"evil", None)])
        reply = post(make(), f"/v1/{operation}", body, content_type)
        assert reply.status == 400 and error_of(reply)["param"] == "model"
        assert "more than once" in error_of(reply)["message"]

    @pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/mixed; boundary=b0undary",
                                              'multipart/form-data; boundary=""'])
    def test_multipart_without_a_usable_boundary_is_a_multipart_error(self, content_type: str) -> None:
        body, _ = multipart([("model", b"dall-e-2", None)])
        reply = post(make(), "/v1/images/edits", body, content_type)
        assert reply.status == 400 and "multipart" in error_of(reply)["message"]


class TestRejectPolicyInAzureForm:
    ENV = {"AOAI_GATEWAY_UNMAPPED_MODELS": "reject", "AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o", "o3": "prod.o3"}'}

    def test_an_unknown_deployment_in_the_path_is_404(self) -> None:
        path = "/openai/deployments/other/chat/completions?api-version=2024-10-21"
        reply = make(self.ENV).on_headers(RequestHead("POST", path, has_body=True))
        assert isinstance(reply, Reply) and reply.status == 404
        error = error_of(reply)
        assert error["code"] == "model_not_found" and "`other`" in error["message"]
        assert "prod-4o, prod.o3" in error["message"]

    @pytest.mark.parametrize("deployment", ["prod-4o", "prod.o3"])
    def test_a_mapped_deployment_passes(self, deployment: str) -> None:
        path = f"/openai/deployments/{deployment}/chat/completions"
        decision = make(self.ENV).on_headers(RequestHead("POST", path, has_body=True))
        # The body is read for the deployments it may name besides the path's ("on your data", the image tool).
        assert isinstance(decision, AwaitBody)
        assert decision.finish(b'{"messages": []}') == Forward(path + "?api-version=2024-10-21", SERVER_CREDENTIAL, "azure",
                                                               deployment=path.split("/")[3], backend="default")
        refused = decision.finish(b'{"data_sources": [{"parameters": {"embedding_dependency": '
                                  b'{"deployment_name": "secret-dep"}}}]}')
        assert isinstance(refused, Reply) and refused.status == 404

    @pytest.mark.parametrize("path", [
        "/openai/deployments/prod%2D4o/chat/completions",  # encoded: a deployment name never needs it
        "/openai/deployments./secret-dep/chat/completions",  # a trailing dot a server may drop
        "/openai/deployments;x=1/secret-dep/chat/completions",
        "/openai/deployments%20/secret-dep/chat/completions",
        "/openai/deployments /secret-dep/chat/completions",
        "/openai/deployments/secret-dep./chat/completions",
        "/openai/deployments/prod-4o/chat/completions/",  # an empty segment
        "/openai/deployments/prod-4o/chat/completions\x00",
    ])
    def test_paths_that_do_not_parse_into_azure_segments_are_refused(self, path: str) -> None:
        for env in (self.ENV, {}):  # under every policy
            reply = make(env).on_headers(RequestHead("POST", path, has_body=True))
            assert isinstance(reply, Reply) and reply.status == 404, (path, reply)

    @pytest.mark.parametrize("method", ["PUT", "PATCH", "TRACE", "OPTIONS", "PROPFIND", "post", "FOO", "HEAD"])
    def test_only_azures_methods_are_forwarded(self, method: str) -> None:
        for env in (self.ENV, {}):
            reply = make(env).on_headers(RequestHead(method, "/openai/deployments/prod-4o/chat/completions"))
            assert isinstance(reply, Reply) and reply.status == 405, (method, reply)
            assert error_of(reply)["type"] == "invalid_request_error"

    def test_other_policies_pass_any_deployment(self) -> None:
        for policy in ("passthrough", "strip_dots"):
            translator = make({"AOAI_GATEWAY_UNMAPPED_MODELS": policy})
            decision = translator.on_headers(RequestHead("POST", "/openai/deployments/any/embeddings", has_body=True))
            assert isinstance(decision, Forward)
            v1 = translator.on_headers(RequestHead("POST", "/openai/v1/chat/completions", "application/json", has_body=True))
            assert isinstance(v1, Forward)  # decided from the headers: the body streams

    @pytest.mark.parametrize("path", ["/openai/v1/chat/completions", "/openai/responses?api-version=2025-04-01-preview",
                                      "/openai/v1/responses", "/openai/assistants?api-version=2024-05-01-preview"])
    def test_the_body_model_of_azure_form_requests_is_checked(self, path: str) -> None:
        translator = make(self.ENV)
        def send(body: bytes, content_type: str = "application/json"):
            decision = translator.on_headers(RequestHead("POST", path, content_type, has_body=True))
            assert isinstance(decision, AwaitBody)
            return decision.finish(body)
        assert send(b'{"model": "other"}').status == 404
        assert send(b'{"model": "gpt-4o"}').status == 404  # a model name is not a deployment here
        assert send(b'{"model": "prod-4o", "model": "other"}').status == 400
        assert send(b"{bad").status == 400
        forward = send(b'{"model": "prod-4o", "input": "x"}')
        assert isinstance(forward, Forward) and forward.body is None and forward.path.startswith(path.partition("?")[0])
        assert isinstance(send(b'{"name": "no model: nothing to route by"}'), Forward)
        body, content_type = multipart([("model", b"other", None)])
        assert send(body, content_type).status == 404

    @pytest.mark.parametrize("path", [
        "/openai/v1/deployments/secret-dep/chat/completions",  # not an Azure path today; a reader may serve it
        "/openai/V1/Deployments/secret-dep/chat/completions",
        "/openai/realtime?api-version=2025-04-01-preview&deployment=secret-dep",
        "/openai/realtime?Deployment=secret%2Ddep&api-version=2025-04-01-preview",
        "/openai/realtime?deployment=prod-4o&deployment=secret-dep",
        "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21&deployment=secret-dep",
    ])
    def test_a_deployment_named_anywhere_else_is_checked_too(self, path: str) -> None:
        for method in ("GET", "POST"):
            reply = make(self.ENV).on_headers(RequestHead(method, path, has_body=method == "POST"))
            assert isinstance(reply, Reply) and reply.status == 404 and "`secret-dep`" in error_of(reply)["message"], reply
        allowed = path.replace("secret-dep", "prod-4o").replace("secret%2Ddep", "prod-4o")
        assert isinstance(make(self.ENV).on_headers(RequestHead("GET", allowed)), Forward), allowed

    def test_uploads_and_bodiless_requests_are_not_buffered(self) -> None:
        translator = make(self.ENV)
        for head in (RequestHead("POST", "/openai/files?api-version=2024-10-21", "multipart/form-data; boundary=x", has_body=True),
                     RequestHead("POST", "/openai/v1/responses/r1/cancel"),
                     RequestHead("GET", "/openai/v1/models")):
            assert isinstance(translator.on_headers(head), Forward), head


class TestUnusualModels:
    @pytest.mark.parametrize("policy", ["passthrough", "strip_dots", "reject"])
    def test_a_lone_surrogate_model_is_400_not_a_crash(self, policy: str) -> None:
        reply = post(make({"AOAI_GATEWAY_UNMAPPED_MODELS": policy}), "/v1/chat/completions", b'{"model": "\\ud800x"}')
        assert isinstance(reply, Reply) and reply.status == 400
        assert error_of(reply)["param"] == "model"

    @pytest.mark.parametrize(("policy", "model"), [("passthrough", ".."), ("passthrough", "."), ("strip_dots", "..."),
                                                   ("strip_dots", ":.")])
    def test_a_model_that_makes_no_deployment_name_is_404(self, policy: str, model: str) -> None:
        reply = post(make({"AOAI_GATEWAY_UNMAPPED_MODELS": policy}), "/v1/chat/completions", chat(model))
        assert isinstance(reply, Reply) and reply.status == 404

    def test_dot_deployment_names_are_refused_in_the_config(self) -> None:
        with pytest.raises(ConfigError, match="not a deployment name"):
            make({"AZURE_OPENAI_MODEL_MAPPER": "gpt-4o=.."})

    def test_an_error_naming_a_lone_surrogate_is_still_json(self) -> None:
        reply = make().on_headers(RequestHead("GET", "/v1/nowhere\udcff"))
        assert isinstance(reply, Reply) and reply.status == 404
        assert "nowhere" in error_of(reply)["message"]


class TestRejectOnResourcePaths:
    ENV = TestRejectPolicyInAzureForm.ENV

    @pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
    def test_an_empty_id_is_404(self, method: str) -> None:
        reply = make().on_headers(RequestHead(method, "/v1/responses/", "application/json", has_body=method == "POST"))
        assert isinstance(reply, Reply) and reply.status == 404

    def test_a_post_below_responses_has_its_model_checked(self) -> None:
        translator = make(self.ENV)
        decision = translator.on_headers(RequestHead("POST", "/v1/responses/input_tokens", "application/json", has_body=True))
        assert isinstance(decision, AwaitBody)
        assert decision.finish(b'{"model": "secret", "input": "x"}').status == 404
        assert isinstance(decision.finish(b'{"model": "prod-4o", "input": "x"}'), Forward)
        cancel = translator.on_headers(RequestHead("POST", "/v1/responses/r1/cancel"))
        assert isinstance(cancel, Forward)  # no body: decided from the headers

    def test_file_uploads_still_stream(self) -> None:
        head = RequestHead("POST", "/v1/files", "multipart/form-data; boundary=x", has_body=True)
        assert isinstance(make(self.ENV).on_headers(head), Forward)

    @pytest.mark.parametrize("path", ["/openai/DEPLOYMENTS/secret/chat/completions", "/openai/Deployments/secret/embeddings"])
    def test_the_deployments_prefix_is_matched_in_any_case(self, path: str) -> None:
        reply = make(self.ENV).on_headers(RequestHead("POST", path, "application/json", has_body=True))
        assert isinstance(reply, Reply) and reply.status == 404

    def test_realtime_client_secrets_name_their_deployment_in_the_session(self) -> None:
        translator = make(self.ENV)
        decision = translator.on_headers(RequestHead("POST", "/openai/v1/realtime/client_secrets", "application/json",
                                                     has_body=True))
        assert isinstance(decision, AwaitBody)
        assert decision.finish(b'{"session": {"type": "realtime", "model": "secret"}}').status == 404
        assert isinstance(decision.finish(b'{"session": {"type": "realtime", "model": "prod-4o"}}'), Forward)

    def test_a_case_variant_model_key_in_an_azure_form_body_is_refused(self) -> None:
        decision = make(self.ENV).on_headers(RequestHead("POST", "/openai/v1/responses", "application/json", has_body=True))
        assert isinstance(decision, AwaitBody)
        assert decision.finish(b'{"Model": "secret", "model": "prod-4o"}').status == 400
        assert decision.finish(b'{"Model": "secret"}').status == 400  # Azure may read it as the model


class TestDotSegments:
    @pytest.mark.parametrize("path", ["/v1/files/../deployments/x/chat/completions", "/v1/batches/%2e%2E/x",
                                      "/openai/deployments/prod/../other/chat/completions",
                                      "/openai/files/..%2F..%2Fdeployments/x", "/v1/files\\..\\x", "/v1/files/./x"])
    def test_a_path_azure_could_resolve_elsewhere_is_404(self, path: str) -> None:
        reply = make().on_headers(RequestHead("GET", path))
        assert isinstance(reply, Reply) and reply.status == 404

    def test_dots_inside_names_are_fine(self) -> None:
        assert isinstance(make().on_headers(RequestHead("GET", "/v1/files/file.v2..jsonl")), Forward)


def test_an_empty_body_is_never_forwarded() -> None:
    """The glue relies on it (requests without a body, or with trailers alone): see translate's doc."""
    translators = [make(), make(endpoints={"chat/completions": {"api": "v1"}}),
                   make(TestRejectPolicyInAzureForm.ENV)]
    paths = [f"/v1/{op}" for op in ("chat/completions", "embeddings", "audio/transcriptions", "images/edits", "responses")]
    paths += ["/openai/v1/chat/completions", "/openai/responses"]
    for translator in translators:
        for path in paths:
            for content_type in ("application/json", "multipart/form-data; boundary=x", ""):
                decision = translator.on_headers(RequestHead("POST", path, content_type, has_body=True))
                if isinstance(decision, AwaitBody):
                    assert isinstance(decision.finish(b""), Reply), (path, content_type)


def test_model_replies_are_built_once() -> None:
    translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "a"}'})
    first = translator.on_headers(RequestHead("GET", "/v1/models/gpt-4o"))
    assert first is translator.on_headers(RequestHead("GET", "/v1/models/gpt-4o"))
    assert first is translator.on_headers(RequestHead("GET", "/v1/models/gpt%2D4o"))


class TestBoundedCost:
    """Whatever its shape, a body costs a bounded amount of work: past the bounds, a clear 400."""

    def test_too_many_top_level_members(self) -> None:
        distinct = b"{" + b",".join(b'"k%d":1' % i for i in range(1001)) + b',"model":"gpt-4o"}'
        escaped = b'{' + b'"\\u0061":1,' * 1001 + b'"model":"gpt-4o"}'  # one dict entry, a long walk
        for body in (distinct, escaped):
            reply = post(make(), "/v1/chat/completions", body)
            assert isinstance(reply, Reply) and reply.status == 400 and "too large a structure" in error_of(reply)["message"]
        assert isinstance(post(make(), "/v1/chat/completions", b"{" + b'"k":1,' * 900 + b'"model":"gpt-4o"}'), Forward)

    def test_too_many_items(self) -> None:
        body = b'{"model":"gpt-4o","x":[' + b"1," * 1_000_001 + b"1]}"
        reply = post(make(), "/v1/chat/completions", body)
        assert isinstance(reply, Reply) and reply.status == 400
        assert isinstance(post(make(), "/v1/chat/completions", b'{"model":"gpt-4o","x":[' + b"1," * 999_000 + b"1]}"),
                          Forward)

    def test_too_many_brackets_to_walk(self) -> None:
        # Two `"model"` strings make the duplicate check walk the body; brackets inside strings cost steps.
        body = b'{"model":"gpt-4o","x":["model",' + b'"[",' * 200_001 + b'"a"]}'
        reply = post(make(), "/v1/chat/completions", body)
        assert isinstance(reply, Reply) and reply.status == 400
        fine = b'{"model":"gpt-4o","x":["model",' + b'"[",' * 1000 + b'"a"]}'
        assert isinstance(post(make(), "/v1/chat/completions", fine), Forward)

    def test_too_many_multipart_parts(self) -> None:
        many = [(f"f{i}", b"x", None) for i in range(256)] + [("model", b"whisper-1", None)]
        body, content_type = multipart(many)
        reply = post(make(), "/v1/audio/transcriptions", body, content_type)
        assert isinstance(reply, Reply) and reply.status == 400 and "too many parts" in error_of(reply)["message"]
        body, content_type = multipart(many[-200:])
        assert isinstance(post(make(), "/v1/audio/transcriptions", body, content_type), Forward)

    def test_a_declared_length_over_the_limit_is_refused_at_once(self) -> None:
        limit = 32 * 1024 * 1024
        for path in ("/v1/chat/completions", "/v1/audio/transcriptions"):
            reply = make().on_headers(RequestHead("POST", path, "application/json", has_body=True, content_length=limit + 1))
            assert isinstance(reply, Reply) and reply.status == 413 and error_of(reply)["code"] == "request_too_large"
        assert isinstance(make().on_headers(RequestHead("POST", "/v1/chat/completions", has_body=True,
                                                        content_length=limit)), AwaitBody)
        # Uploads that stream are not held to the body limit.
        files = make().on_headers(RequestHead("POST", "/v1/files", "multipart/form-data; boundary=b", has_body=True,
                                              content_length=limit * 4))
        assert isinstance(files, Forward)


def test_credential_query_parameters_never_go_upstream() -> None:
    for path in ("/v1/chat/completions?api-key=leak&x=1&Subscription-Key=leak2&api%5Fkey=leak3",):
        decision = post(make(), path, chat())
        assert "leak" not in decision.path and "x=1" in decision.path
    for path in ("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&api-key=leak&code=leak2",
                 "/openai/v1/chat/completions?api-key=leak", "/v1/files?API-KEY=leak&purpose=batch"):
        decision = make().on_headers(RequestHead("GET" if "files" in path else "POST", path))
        assert isinstance(decision, Forward) and "leak" not in decision.path, decision
    # Names other readers may take for a credential: array syntax, a NUL, `;` as a separator.
    for query in ("api-key[]=leak", "api-key%00=leak", "foo=bar;api-key=leak", "x=1;%20Token=leak", "API_KEY%5B%5D=leak"):
        for path in (f"/v1/chat/completions?{query}&x=2", f"/openai/v1/chat/completions?{query}&x=2",
                     f"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&{query}&x=2"):
            decision = post(make(), path, chat()) if path.startswith("/v1/") else make().on_headers(RequestHead("POST", path))
            assert isinstance(decision, Forward) and "leak" not in decision.path and "x=2" in decision.path, (path, decision)


def test_the_answer_cache_holds_no_long_answers() -> None:
    from extproc.processor.call import ForwardCache

    cache = ForwardCache(enabled=True)
    for i in range(100):
        long_path = f"/openai/deployments/d/chat/completions?x={'a' * 100_000}{i}"
        cache.get(Forward(long_path, SERVER_CREDENTIAL, "azure"), headers_phase=False)
    assert not cache._entries
    cache.get(Forward("/openai/deployments/d/chat/completions", SERVER_CREDENTIAL, "azure"), headers_phase=False)
    assert len(cache._entries) == 1
