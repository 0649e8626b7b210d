"""`usage.include_stream_usage`: a streamed chat or legacy completions request is sent asking Azure for its
token usage (`stream_options.include_usage`), every other byte of the body as the client sent it.
Through the real Envoy, the emulator and the SDK: tests/e2e/test_stream_usage.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pytest

from extproc.compile import compile_gateway
from extproc.config import ConfigError, load_settings
from extproc.core.decision import Forward, Reply
from extproc.core.translator import Translator
from extproc.processor.messages import body_forward_response

from .test_translator import error_of, make, multipart, post

ON = {"include_stream_usage": True}
MEMBER = b'"stream_options":{"include_usage":true},'


def streamed(model: str = "gpt-4o", **more: object) -> bytes:
    return orjson.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}], **more})


def forwarded(decision: Forward | Reply) -> dict:
    """The JSON body the decision sends on (the client's when it sends none of its own)."""
    assert isinstance(decision, Forward), decision
    assert decision.body is not None, "the body was not changed"
    return json.loads(decision.body)


class TestSetting:
    def test_off_by_default_and_carried_into_the_gateway(self, tmp_path: Path) -> None:
        settings = load_settings(env={"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com"})
        assert settings.usage.include_stream_usage is None  # on only with token limits
        assert compile_gateway(settings).include_stream_usage is False
        path = tmp_path / "gateway.yaml"
        path.write_text("azure: {endpoint: https://res.openai.azure.com}\nusage: {include_stream_usage: true}\n")
        settings = load_settings(path, env={})
        assert settings.usage.include_stream_usage is True
        assert compile_gateway(settings).include_stream_usage is True

    @pytest.mark.parametrize(("text", "field"), [
        ("usage: {include_stream_usage: maybe}", "usage.include_stream_usage"),
        ("usage: {include_stream_usage: [true]}", "usage.include_stream_usage"),
        ("usage: {include_usage: true}", "usage.include_usage: unknown key"),
        ("usage: true", "usage"),
    ])
    def test_bad_values_are_refused_naming_the_field(self, tmp_path: Path, text: str, field: str) -> None:
        path = tmp_path / "gateway.yaml"
        path.write_text(text + "\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(path, env={})
        assert field in str(caught.value)

    def test_off_the_body_goes_on_as_sent(self) -> None:
        for translator in (make(), make(usage={"include_stream_usage": False})):
            for path in ("/v1/chat/completions", "/v1/completions"):
                decision = post(translator, path, streamed())
                assert isinstance(decision, Forward) and decision.body is None

    def test_off_costs_no_look_at_the_body(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def looked(*_args: object) -> None:
            raise AssertionError("the body was looked at for stream_options with the option off")

        monkeypatch.setattr(Translator, "_stream_options_wanted", looked)
        assert post(make(), "/v1/chat/completions", streamed()).body is None  # type: ignore[union-attr]


class TestInserted:
    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
    def test_a_stream_without_stream_options_gets_the_member_and_nothing_else(self, path: str) -> None:
        body = b'{ "model" : "gpt-4o",\n "stream": true, "n": 1.0, "seed": 123456789012345678901234567890,' \
               b' "prompt": "\\u00e9 \\/ x", "max_tokens": 1E+2 }'
        decision = post(make(usage=ON), path, body)
        assert isinstance(decision, Forward) and decision.path.startswith("/openai/deployments/gpt-4o/")
        assert decision.body == b"{" + MEMBER + body[1:]  # every byte of the client's as sent
        assert json.loads(decision.body) == {**json.loads(body), "stream_options": {"include_usage": True}}

    def test_the_new_length_goes_to_envoy(self) -> None:
        decision = post(make(usage=ON), "/v1/chat/completions", streamed())
        mutation = body_forward_response(decision).request_body.response.header_mutation
        lengths = [h.header.raw_value for h in mutation.set_headers if h.header.key == "content-length"]
        assert lengths == [str(len(decision.body)).encode()] and len(decision.body) == len(streamed()) + len(MEMBER)

    def test_bom_and_encoding_are_kept(self) -> None:
        translator = make(usage=ON)
        assert post(translator, "/v1/chat/completions", b'\xef\xbb\xbf{"model":"m","stream":true}').body == \
            b'\xef\xbb\xbf{"stream_options":{"include_usage":true},"model":"m","stream":true}'
        for encoding in ("utf-16", "utf-32-be"):
            body = '{"model": "m", "stream": true, "x": "é"}'.encode(encoding)
            expected = '{"stream_options":{"include_usage":true},"model": "m", "stream": true, "x": "é"}'
            assert post(translator, "/v1/chat/completions", body).body == expected.encode(encoding), encoding


class TestRewritten:
    @pytest.mark.parametrize("options", [
        {}, {"include_usage": False}, {"include_usage": None}, {"include_obfuscation": False},
        {"include_usage": 1}, {"include_usage": "true"},
    ])
    def test_stream_options_without_include_usage_true_is_written_anew(self, options: dict) -> None:
        for path in ("/v1/chat/completions", "/v1/completions"):
            body = b'{"model": "gpt-4o", "stream": true, "stream_options": ' + orjson.dumps(options) + b', "n": 1.0}'
            decision = post(make(usage=ON), path, body)
            assert isinstance(decision, Forward)
            expected = {**options, "include_usage": True}
            assert decision.body == body.replace(orjson.dumps(options), orjson.dumps(expected))
            assert forwarded(decision)["stream_options"] == expected

    def test_an_escaped_member_name_is_the_member(self) -> None:
        body = b'{"model": "gpt-4o", "stream": true, "stream\\u005foptions": {"include_usage": false}}'
        assert post(make(usage=ON), "/v1/chat/completions", body).body == \
            b'{"model": "gpt-4o", "stream": true, "stream\\u005foptions": {"include_usage":true}}'

    def test_stream_options_given_twice_is_refused(self) -> None:
        body = b'{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": false},' \
               b' "stream_options": {"include_usage": false}}'
        reply = post(make(usage=ON), "/v1/chat/completions", body)
        assert isinstance(reply, Reply) and reply.status == 400
        assert error_of(reply)["param"] == "stream_options" and "more than once" in error_of(reply)["message"]
        assert isinstance(post(make(), "/v1/chat/completions", body), Forward)  # off: not the gateway's business


class TestUnchanged:
    @pytest.mark.parametrize("more", [
        {"stream_options": {"include_usage": True}},
        {"stream_options": {"include_usage": True, "include_obfuscation": False}},
        {"stream_options": None},  # Azure's own 400 answers these
        {"stream_options": "include_usage"},
        {"stream_options": [{"include_usage": True}]},
        {"stream_options": True},
    ])
    def test_a_stream_already_asking_or_with_stream_options_no_object(self, more: dict) -> None:
        for path in ("/v1/chat/completions", "/v1/completions"):
            decision = post(make(usage=ON), path, streamed(**more))
            assert isinstance(decision, Forward) and decision.body is None, (path, more)

    @pytest.mark.parametrize("stream", [None, False, "true", 1, [True]])
    def test_requests_not_streamed(self, stream: object) -> None:
        body = {"model": "gpt-4o", "messages": []} if stream is None else {"model": "gpt-4o", "stream": stream}
        for path in ("/v1/chat/completions", "/v1/completions"):
            decision = post(make(usage=ON), path, orjson.dumps(body))
            assert isinstance(decision, Forward) and decision.body is None, (path, stream)

    @pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/audio/speech", "/v1/images/generations", "/v1/images/edits",
                                      "/v1/responses"])
    def test_other_json_endpoints(self, path: str) -> None:
        decision = post(make(usage=ON), path, streamed())
        assert isinstance(decision, Forward) and decision.body is None

    @pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/images/edits"])
    def test_forms(self, path: str) -> None:
        body, content_type = multipart([("model", b"whisper", None), ("stream", b"true", None),
                                        ("file", b"RIFF", "a.wav")])
        decision = post(make(usage=ON), path, body, content_type)
        assert isinstance(decision, Forward) and decision.body is None

    def test_requests_in_azures_form(self) -> None:
        translator = make({"AOAI_GATEWAY_UNMAPPED_MODELS": "reject", "AZURE_MODEL_MAP": '{"gpt-4o": "d"}'}, usage=ON)
        for path in ("/openai/deployments/d/chat/completions?api-version=2024-10-21", "/openai/v1/chat/completions"):
            decision = post(translator, path, streamed("d"))
            assert isinstance(decision, Forward) and decision.body is None, path


class TestComposed:
    def test_with_the_models_rewrite(self) -> None:
        translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}, usage=ON,
                          endpoints={"chat/completions": {"api": "v1"}})
        body = b'{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": false}, "x": 1.0}'
        decision = post(translator, "/v1/chat/completions", body)
        assert decision.path == "/openai/v1/chat/completions"
        assert decision.body == b'{"model": "prod-4o", "stream": true, "stream_options": {"include_usage":true}, "x": 1.0}'
        inserted = post(translator, "/v1/chat/completions", b'{"model": "gpt-4o", "stream": true}')
        assert inserted.body == b'{' + MEMBER + b'"model": "prod-4o", "stream": true}'

    def test_with_the_default_model(self) -> None:
        translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}, usage=ON, default_model="gpt-4o",
                          endpoints={"completions": {"api": "v1"}})
        decision = post(translator, "/v1/completions", b'{"prompt": "hi", "stream": true}')
        assert forwarded(decision) == {"model": "prod-4o", "prompt": "hi", "stream": True,
                                       "stream_options": {"include_usage": True}}
        assert decision.body.endswith(b'"prompt": "hi", "stream": true}')

    POOLS = {
        "backends": {"east": {"endpoint": "https://east.openai.azure.com", "api_key": "east-key"},
                     "oai": {"endpoint": "https://api.openai.example", "type": "openai", "api_key": "oai-key"}},
        "models": {"gpt-4o": [{"backend": "east", "deployment": "gpt-4o-east"},
                              {"backend": "default", "deployment": "gpt-4o-main"}],
                   "mixed": [{"backend": "east", "deployment": "m-east"}, {"backend": "oai", "deployment": "gpt-4o"}]},
    }

    def test_with_pools_one_body_for_every_member(self) -> None:
        translator = make(usage=ON, **self.POOLS)
        body = streamed("gpt-4o")
        decision = post(translator, "/v1/chat/completions", body)
        assert isinstance(decision, Forward) and len(decision.tries) == 2
        assert decision.body == b"{" + MEMBER + body[1:]
        # A member reading the model from the body (OpenAI): the model rewritten too, in the same body.
        decision = post(translator, "/v1/chat/completions",
                        b'{"model": "mixed", "stream": true, "stream_options": {}}')
        assert [t.path for t in decision.tries] == ["/openai/deployments/m-east/chat/completions?api-version=2024-10-21",
                                                    "/v1/chat/completions"]
        assert decision.body == b'{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage":true}}'
        assert post(translator, "/v1/chat/completions", streamed("gpt-4o", stream_options={"include_usage": True})) \
            .body is None  # type: ignore[union-attr]

    KEY = "sk-aoai-limited"

    def limited(self, **more: object) -> Translator:
        clients = {"keys": [{"name": "team", "key_sha256": hashlib.sha256(self.KEY.encode()).hexdigest(),
                             "models": ["gpt-4o"]}]}
        return make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}, usage=ON, clients=clients, **more)

    def test_with_a_limited_keys_body_written_anew(self) -> None:
        # `data_sources` make the body canonical (the document written out): the member is in the document.
        sources = [{"type": "azure_search", "parameters": {"embedding_dependency": {
            "type": "deployment_name", "deployment_name": "prod-4o"}}}]
        for more, expected in (({}, {"include_usage": True}),
                               ({"stream_options": {"include_usage": False, "x": 1}}, {"include_usage": True, "x": 1})):
            body = streamed("gpt-4o", data_sources=sources, **more)
            decision = post(self.limited(), "/v1/chat/completions", body, authorization=f"Bearer {self.KEY}")
            assert isinstance(decision, Forward) and decision.client == "team"
            assert forwarded(decision) == {**json.loads(body), "stream_options": expected}
            assert decision.body.count(b"stream_options") == 1
        # On the v1 surface the model is rewritten in that body as well.
        decision = post(self.limited(endpoints={"chat/completions": {"api": "v1"}}), "/v1/chat/completions",
                        streamed("gpt-4o", data_sources=sources), authorization=f"Bearer {self.KEY}")
        assert forwarded(decision) == {**json.loads(streamed("prod-4o", data_sources=sources)),
                                       "stream_options": {"include_usage": True}}

    def test_with_a_limited_keys_plain_body(self) -> None:
        body = streamed("gpt-4o")
        decision = post(self.limited(), "/v1/chat/completions", body, authorization=f"Bearer {self.KEY}")
        assert isinstance(decision, Forward) and decision.body == b"{" + MEMBER + body[1:]

    def test_with_bring_your_own_key(self) -> None:
        token = "Bearer contoso:dep:0123456789abcdef0123456789abcdef"
        asking = {"stream_options": {"include_usage": True}}
        for endpoints, model in (({}, "gpt-4o"), ({"chat/completions": {"api": "v1"}}, "dep")):  # v1: model rewritten
            translator = make(usage=ON, clients={"byok": True}, endpoints=endpoints)
            decision = post(translator, "/v1/chat/completions", streamed("gpt-4o"), authorization=token)
            assert isinstance(decision, Forward) and decision.cluster == "byok"
            assert decision.body == b"{" + MEMBER + streamed(model)[1:]
            decision = post(translator, "/v1/chat/completions", streamed("gpt-4o", **asking), authorization=token)
            assert decision.body == (None if model == "gpt-4o" else streamed(model, **asking))

    def test_the_decision_is_made_on_the_one_parse(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from extproc.core import bodies

        parses = []
        real = bodies.parse_json
        monkeypatch.setattr(bodies, "parse_json", lambda body: parses.append(body) or real(body))
        translator = make({"AZURE_MODEL_MAP": '{"gpt-4o": "prod-4o"}'}, usage=ON,
                          endpoints={"chat/completions": {"api": "v1"}})
        post(translator, "/v1/chat/completions", streamed("gpt-4o", stream_options={}))
        assert len(parses) == 1

