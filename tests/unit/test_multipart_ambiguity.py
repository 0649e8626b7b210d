"""multipart/form-data bodies that two readers could read differently are refused.

The gateway reads the `model` field with python-multipart; Azure reads the body with ASP.NET Core's
MultipartReader. Under `unmapped_models: reject` a body whose model another reader could read
differently (another boundary, another part, another name, another decoding) would let an unmapped
deployment through, so every such body is a 400; what real clients send still passes.

Each hostile body below names the mapped model `stt` as the gateway used to read it, so it was
forwarded before these checks (or refused with another error); `stt` maps to the deployment `stt`,
so the one body passes both on /v1 (a model) and on Azure's v1 API (a deployment).
"""

from __future__ import annotations

import httpx
import pytest

from extproc.core.decision import Forward, Reply

from .test_translator import error_of, make, post

ENV = {"AOAI_GATEWAY_UNMAPPED_MODELS": "reject", "AZURE_MODEL_MAP": '{"stt": "stt"}'}
PATHS = ("/v1/audio/transcriptions", "/openai/v1/audio/transcriptions")
B = "b0undary"
CT = f"multipart/form-data; boundary={B}"


def part(disposition: str | bytes, value: bytes = b"x", headers: bytes = b"", boundary: str = B) -> bytes:
    if isinstance(disposition, str):
        disposition = disposition.encode()
    return f"--{boundary}\r\n".encode() + b"Content-Disposition: " + disposition + b"\r\n" + headers + b"\r\n" + value + b"\r\n"


def close(boundary: str = B) -> bytes:
    return f"--{boundary}--\r\n".encode()


MODEL = part('form-data; name="model"', b"stt")
BODY = MODEL + close()


def assert_refused(body: bytes, content_type: str = CT, env: dict[str, str] = ENV) -> None:
    for path in PATHS:
        reply = post(make(env), path, body, content_type)
        assert isinstance(reply, Reply) and reply.status == 400, (path, reply)
        assert "multipart" in error_of(reply)["message"], (path, error_of(reply))


def assert_passes(body: bytes, content_type: str) -> None:
    for path in PATHS:
        decision = post(make(ENV), path, body, content_type)
        assert isinstance(decision, Forward), (path, decision)


# --- the Content-Type: one boundary, read alike ----------------------------------------------------


def test_two_boundaries_are_refused() -> None:
    # The gateway framed the body with the last boundary; ASP.NET takes the first, skips everything
    # up to `--evil` as a preamble, and reads the model `other`.
    hidden = b'en\r\n--evil\r\nContent-Disposition: form-data; name="model"\r\n\r\nother\r\n--evil--'
    body = part('form-data; name="language"', hidden) + BODY
    assert_refused(body, "multipart/form-data; boundary=evil; boundary=b0undary")


@pytest.mark.parametrize("content_type", [
    "multipart/form-data; boundary=b0undary; boundary=b0undary",
    'multipart/form-data; boundary=b0undary; boundary="b0undary"',  # quoted and unquoted: still twice
    "multipart/form-data; boundary=other; BOUNDARY=b0undary",
    "multipart/form-data; boundary=b0undary; charset=utf-8; Charset=utf-8",
    "multipart/form-data; boundary=b0undary; boundary*=UTF-8''other",
    "multipart/form-data; boundary*=UTF-8''other; boundary=b0undary",
    "multipart/form-data; boundary*0=oth; boundary*1=er; boundary=b0undary",
    "multipart/form-data; boundary=b0undary; x*=UTF-8''y",
    "multipart/form-data; boundary = b0undary",  # space around `=`
    "multipart/form-data; boundary=b0undary;",
    "multipart/form-data; ; boundary=b0undary",
])
def test_ambiguous_content_type_parameters_are_refused(content_type: str) -> None:
    assert_refused(BODY, content_type)


@pytest.mark.parametrize("charset", ["iso-8859-1", "utf-16", "UTF8", '"us-ascii"'])
def test_a_charset_other_than_utf8_is_refused(charset: str) -> None:
    assert_refused(BODY, f"{CT}; charset={charset}")


@pytest.mark.parametrize("boundary, header", [
    ("a" * 71, "a" * 71),  # RFC 2046: at most 70 (ASP.NET refuses longer ones too)
    ("b0undary ", '"b0undary "'),  # trailing space: a reader may take it for transport padding
    ("b0\\undary", '"b0\\\\undary"'),  # python-multipart unescapes `\\`, ASP.NET does not
    ("b0\x01undary", '"b0\x01undary"'),
])
def test_boundaries_rfc_2046_does_not_allow_are_refused(boundary: str, header: str) -> None:
    body = part('form-data; name="model"', b"stt", boundary=boundary) + close(boundary)
    assert_refused(body, f"multipart/form-data; boundary={header}")


# --- the framing: where parts begin and end --------------------------------------------------------


@pytest.mark.parametrize("preamble", [b"\r\n", b"\r\nhello\r\n", b"\r\n\r\n"])
def test_a_preamble_is_refused(preamble: bytes) -> None:
    assert_refused(preamble + BODY)


@pytest.mark.parametrize("epilogue", [
    part('form-data; name="model"', b"other") + close(),  # another part after the close
    b"garbage",
])
def test_anything_but_whitespace_after_the_close_is_refused(epilogue: bytes) -> None:
    assert_refused(BODY + epilogue)


def test_a_close_delimiter_with_more_on_its_line_is_refused() -> None:
    # `--b0undary--x` closes the body for python-multipart; ASP.NET ignores the rest of a boundary
    # line unless it is exactly `--`, so to it the body goes on, with another model.
    body = MODEL + b"--b0undary--x\r\n" + part('form-data; name="model"', b"other") + close()
    assert_refused(body)


@pytest.mark.parametrize("line", [b"--b0undaryX", b"--b0undary-x", b"--b0undary ", b"--b0undary\t"])
def test_a_boundary_line_with_more_than_the_boundary_is_refused(line: bytes) -> None:
    # Part data to python-multipart (or padding it skips), a delimiter to ASP.NET: a hidden part.
    hidden = b"en\r\n" + line + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nother'
    assert_refused(part('form-data; name="language"', hidden) + BODY)


@pytest.mark.parametrize("value", [b"en--b0undary", b"en\n--b0undary\r\nx", b"--b0undary"])
def test_the_boundary_inside_a_value_is_refused(value: bytes) -> None:
    assert_refused(part('form-data; name="language"', value) + BODY)


def test_the_boundary_inside_the_model_value_is_refused() -> None:
    env = {"AOAI_GATEWAY_UNMAPPED_MODELS": "reject", "AZURE_MODEL_MAP": '{"stt--b0": "stt--b0"}'}
    body = part('form-data; name="model"', b"stt--b0", boundary="b0") + close("b0")
    assert_refused(body, "multipart/form-data; boundary=b0", env)


@pytest.mark.parametrize("body", [
    MODEL,  # no close: ASP.NET fails at the end of the stream; python-multipart never ended the part
    MODEL[:-2],
    MODEL + part('form-data; name="language"', b"en"),
])
def test_a_body_without_its_closing_boundary_is_refused(body: bytes) -> None:
    assert_refused(body)


# --- part headers: one name, read alike -----------------------------------------------------------


@pytest.mark.parametrize("disposition", [
    "form-data; name*=UTF-8''model",  # RFC 2231: python-multipart ignores it, others prefer it
    "form-data; name=\"x\"; name*=UTF-8''model",
    'form-data; name="=?utf-8?B?bW9kZWw=?="',  # RFC 2047: ASP.NET decodes this name to `model`
    'form-data; name="=?utf-8?Q?model?="',
    'form-data; name="mod\\el"',  # a reader honouring backslash escapes reads `model`
    'form-data; name="mod%65l"',  # a percent-decoding reader reads `model`
    'form-data; name=" model"',  # trimming readers read `model`
    'form-data; name="model "',
    'form-data; name="model\t"',
    b'form-data; name=model\xc2\xa0',  # ASP.NET trims the UTF-8 no-break space: `model`
    b'form-data; name="model"\xc2\xa0',
    b'form-data; name="model\x00"',
    b'form-data; name="model\x0b"',
    'form-data; filename="a\\"; name="model"',  # to a reader without escapes, the name is `model`
    'form-data; name="x"; filename="a; name=model"',  # to a reader splitting on every `;`, too
    "form-data; name=\"x\"; filename=\"a; name*=UTF-8''model\"",
])
def test_names_readers_could_read_as_model_are_refused(disposition: str | bytes) -> None:
    assert_refused(part(disposition, b"other") + BODY)


@pytest.mark.parametrize("disposition", [
    'form-data; name = "model"',  # space around `=`
    'form-data; NAME = "model"',
    'Form-Data; name="model"',  # ASP.NET compares the type case-sensitively: no form field to it
    'FORM-DATA; name="model"',
    'attachment; name="model"',
    'form-data; name="model"; foo=bar',
    "form-data; name=\"model\"; filename*=UTF-8''m.txt",  # a file to ASP.NET, a field to the gateway
    "form-data; name=\"model\"; name*=UTF-8''other",
    'form-data; name=model;',
    'form-data; ; name="model"',
    'form-data; name="model" x',
])
def test_model_parts_readers_could_read_differently_are_refused(disposition: str) -> None:
    assert_refused(part(disposition, b"stt") + close())


@pytest.mark.parametrize("disposition", [
    'form-data; name="file"; filename="a.wav"; filename="b.wav"',
    'form-data; name="file"; FILENAME="a.wav"; filename="b.wav"',
    "form-data; name=\"file\"; filename*=UTF-8''a.wav",  # filename* without filename
    "form-data; name=\"file\"; filename=\"a.wav\"; filename*=\"UTF-8''a.wav\"",
    "form-data; name=\"file\"; filename=\"a.wav\"; filename*=ISO-8859-1''a.wav",
    "form-data; name=\"file\"; filename=\"a.wav\"; filename*=UTF-8''a.wav; filename*=UTF-8''b.wav",
    'form-data; name="_charset_"',  # RFC 7578 4.6: would change how readers decode the other fields
    'form-data; name="_CHARSET_"',
    'form-data; filename="a.wav"',  # no name
    'form-data; name=""',
    'form-data',
])
def test_other_parts_readers_could_read_differently_are_refused(disposition: str) -> None:
    assert_refused(part(disposition, b"iso-8859-1") + BODY)


def test_a_part_without_content_disposition_is_refused() -> None:
    assert_refused(b"--b0undary\r\nContent-Type: text/plain\r\n\r\nx\r\n" + BODY)


@pytest.mark.parametrize("headers", [
    b"Content-Type: audio/wav\r\nContent-Type: audio/wav\r\n",
    b"Content-Transfer-Encoding: binary\r\ncontent-transfer-encoding: binary\r\n",
    b"X-Note: a\nb\r\n",  # a bare LF: ASP.NET reads lines up to CRLF only
    b"X-Note: a\x00b\r\n",
])
def test_duplicate_or_malformed_part_headers_are_refused(headers: bytes) -> None:
    assert_refused(part('form-data; name="file"; filename="a.wav"', b"RIFF", headers) + BODY)


# --- part content: one value, decoded alike ---------------------------------------------------------


def test_a_nested_multipart_part_is_refused() -> None:
    inner = b'--inner\r\nContent-Disposition: form-data; name="model"\r\n\r\nother\r\n--inner--'
    headers = b"Content-Type: multipart/mixed; boundary=inner\r\n"
    assert_refused(part('form-data; name="files"', inner, headers) + BODY)
    assert_refused(part('form-data; name="model"', b"stt", b"Content-Type: Multipart/Mixed; boundary=inner\r\n") + close())


@pytest.mark.parametrize("encoding", [b"base64", b"quoted-printable", b"x-gzip"])
def test_a_content_transfer_encoding_is_refused(encoding: bytes) -> None:
    headers = b"Content-Transfer-Encoding: " + encoding + b"\r\n"
    assert_refused(part('form-data; name="model"', b"stt", headers) + close())
    assert_refused(part('form-data; name="file"; filename="a.wav"', b"UklGRg==", headers) + BODY)


@pytest.mark.parametrize("headers", [
    b"Content-Type: text/plain; charset=utf-16\r\n",
    b"Content-Type: text/plain; charset=utf-7\r\n",
    b"Content-Type: text/plain; charset=utf-8; charset=utf-16\r\n",
    b"Content-Type: text/plain; charset*=utf-8''utf-16\r\n",
    b"Content-Type: application/json\r\n",
    b"Content-Type: text/plain; format=flowed\r\n",
    b"Content-Encoding: gzip\r\n",  # a header on the model part a reader could act on
    b"Content-Length: 2\r\n",  # not the value's length: a reader trusting it reads `st`
])
def test_model_parts_a_reader_could_decode_differently_are_refused(headers: bytes) -> None:
    assert_refused(part('form-data; name="model"', b"stt", headers) + close())


def test_a_wrong_content_length_on_any_part_is_refused() -> None:
    file = part('form-data; name="file"; filename="a.wav"', b"RIFF", b"Content-Length: 400\r\n")
    assert_refused(file + BODY)


@pytest.mark.parametrize("value", [b"\xef\xbb\xbfstt", b"stt ", b" stt", b"stt\r\n", b"stt\x00", b"st\tt"])
def test_model_values_a_reader_could_decode_or_trim_differently_are_refused(value: bytes) -> None:
    # .NET's reader drops a byte-order mark; others trim whitespace. The gateway read another name
    # (and answered 404 model_not_found); the body is now refused as ambiguous.
    assert_refused(part('form-data; name="model"', value) + close())


def test_a_non_ascii_model_in_a_latin1_part_is_refused() -> None:
    headers = b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
    assert_refused(part('form-data; name="model"', "stt\u00e9".encode(), headers) + close())


# --- what real clients send still passes ----------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audio.translations, still served
def test_the_openai_python_sdk_passes() -> None:
    """The exact bytes the installed OpenAI SDK sends, captured from its own HTTP client."""
    openai = pytest.importorskip("openai")
    http = pytest.importorskip("httpx2")
    sent: list[tuple[str, bytes]] = []

    def capture(request):  # noqa: ANN001, ANN202
        sent.append((request.headers["content-type"], request.read()))
        return http.Response(200, json={"text": "ok", "created": 0, "data": []})

    client = openai.OpenAI(api_key="k", base_url="http://gateway/v1", http_client=http.Client(transport=http.MockTransport(capture)))
    client.audio.transcriptions.create(model="stt", file=('\u00e9 "a\\b".wav', b"RIFF\x00--\r\n"), language="en",
                                       timestamp_granularities=["word", "segment"], response_format="verbose_json")
    client.audio.translations.create(model="stt", file=("a.mp3", b"ID3"), prompt="p")
    client.images.edit(model="stt", image=[("a.png", b"\x89PNG"), ("b.png", b"\x89PNG")], prompt="x", mask=("m.png", b"P"))
    assert len(sent) == 3
    for content_type, body in sent:
        assert_passes(body, content_type)


@pytest.mark.parametrize("module", ["httpx", "httpx2"])
def test_httpx_multipart_encoding_passes(module: str) -> None:
    http = httpx if module == "httpx" else pytest.importorskip("httpx2")
    files = [("file", ('sp ace "q" \u00e9\\.wav', b"RIFF\x00\x01\r\n--", "audio/wav")), ("image[]", ("b.png", b"\x89PNG"))]
    data = {"model": "stt", "language": "en", "timestamp_granularities[]": ["word", "segment"], "temperature": "0"}
    request = http.Request("POST", "http://gateway/v1/audio/transcriptions", files=files, data=data)
    assert_passes(request.read(), request.headers["content-type"])


def _body(boundary: str, parts: list[bytes], epilogue: bytes = b"\r\n") -> bytes:
    return b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts) + f"--{boundary}--".encode() + epilogue


CHROME = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
FIREFOX = "----geckoformboundary5c5f5cc29d1e7c8e1b5f3a2b9d0e6a4f"
DOTNET = "Qx=7fJ0Ua_vK3b8=mZ2cT9yWnR4eL6dG1hS5pA0oXiBqV7uCjNlYwE3kF8gHrIt2sOz4PD"  # the .NET SDK's: 70 characters
GO = "d6f0e9a1c3b54e7f8a2d1c0b9e8f7a6d5c4b3a2918273645546372819a0b"

REAL_CLIENTS = {
    # Browsers' FormData: `"` in a file name as %22, other bytes (UTF-8, `\`) as they are.
    "chrome": (f"multipart/form-data; boundary={CHROME}", _body(CHROME, [
        b'Content-Disposition: form-data; name="model"\r\n\r\nstt',
        b'Content-Disposition: form-data; name="file"; filename="caf\xc3\xa9 %22x%22 a\\b.webm"\r\n'
        b"Content-Type: audio/webm\r\n\r\n\x1aE\xdf\xa3",
        b'Content-Disposition: form-data; name="prompt"\r\n\r\nline 1\r\nline 2',
    ])),
    "firefox": (f"multipart/form-data; boundary={FIREFOX}", _body(FIREFOX, [
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF',
        b'Content-Disposition: form-data; name="model"\r\n\r\nstt',
    ])),
    "curl": ("multipart/form-data; boundary=------------------------d74496d66958873e", _body(
        "------------------------d74496d66958873e", [
            b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/x-wav\r\n\r\nRIFF',
            b'Content-Disposition: form-data; name="model"\r\n\r\nstt',
        ])),
    # .NET's MultipartFormDataContent (the OpenAI .NET SDK): a quoted 70-character boundary with
    # `=`, unquoted names, `text/plain; charset=utf-8` fields, files with filename and filename*.
    "dotnet": (f'multipart/form-data; boundary="{DOTNET}"', _body(DOTNET, [
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Disposition: form-data; name=model\r\n\r\nstt",
        b"Content-Disposition: form-data; name=file; filename=audio.wav; filename*=utf-8''audio.wav\r\n\r\nRIFF",
        b'Content-Disposition: form-data; name=file2; filename="=?utf-8?B?w6kud2F2?="; '
        b"filename*=utf-8''%C3%A9.wav\r\n\r\nRIFF",
    ])),
    # Apache HttpClient's strict mode: a Latin-1 text part and transfer-encoding headers.
    "apache": ("multipart/form-data; boundary=Ab3dEf_gH-1jK", _body("Ab3dEf_gH-1jK", [
        b'Content-Disposition: form-data; name="model"\r\nContent-Type: text/plain; charset=ISO-8859-1\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\nstt",
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: application/octet-stream\r\n'
        b"Content-Transfer-Encoding: binary\r\n\r\nRIFF",
    ])),
    # Spring adds a charset to the media type; Go's mime/multipart, a 60-character boundary.
    "spring": ("multipart/form-data;charset=UTF-8;boundary=spring-7a9", _body("spring-7a9", [
        b'Content-Disposition: form-data; name="model"\r\nContent-Length: 3\r\n\r\nstt',
    ])),
    "go": (f"multipart/form-data; boundary={GO}", _body(GO, [
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: application/octet-stream\r\n\r\nRIFF',
        b'Content-Disposition: form-data; name="model"\r\n\r\nstt',
    ])),
    # The close without a final CRLF, or with blank lines after it (RFC 2046 allows an epilogue).
    "no final CRLF": (CT, _body(B, [b'Content-Disposition: form-data; name="model"\r\n\r\nstt'], b"")),
    "blank epilogue": (CT, _body(B, [b'Content-Disposition: form-data; name="model"\r\n\r\nstt'], b"\r\n\r\n")),
    "70-character boundary": ("multipart/form-data; boundary=" + "b" * 70, _body("b" * 70, [
        b'Content-Disposition: form-data; name="model"\r\n\r\nstt'])),
}


@pytest.mark.parametrize("client", sorted(REAL_CLIENTS))
def test_what_real_clients_send_passes(client: str) -> None:
    content_type, body = REAL_CLIENTS[client]
    assert_passes(body, content_type)


def test_a_body_with_no_model_still_passes_under_azure_form() -> None:
    # Nothing to route by: forwarded, as before (the /v1 surface asks for a model).
    body = _body(B, [b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'])
    decision = post(make(ENV), "/openai/v1/audio/transcriptions", body, CT)
    assert isinstance(decision, Forward)
    reply = post(make(ENV), "/v1/audio/transcriptions", body, CT)
    assert isinstance(reply, Reply) and error_of(reply)["param"] == "model"
