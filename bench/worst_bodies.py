"""The CPU one request body costs the translation core, for the costliest shapes found: each body at
the 32 MiB limit (or just under a bound), timed with the process's CPU clock. Hostile-input figures for
the README's Security section.

    python -m bench.worst_bodies
"""

from __future__ import annotations

import time

from extproc.compile import compile_gateway
from extproc.config import load_settings
from extproc.core.decision import AwaitBody, RequestHead
from extproc.core.translator import Translator

LIMIT = 32 * 1024 * 1024
MULTIPART = "multipart/form-data; boundary=b"


def shapes() -> list[tuple[str, bytes, str, str]]:
    json, chat, audio = "application/json", "/v1/chat/completions", "/v1/audio/transcriptions"
    part = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
    file_head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    return [
        ("escaped duplicate names (3M x \\u0061)", b"{" + b'"\\u0061":1,' * ((LIMIT - 100) // 11) + b'"model":"gpt-4o"}', json, chat),
        ("1.9M distinct members", b"{" + b",".join(b'"k%d":1' % i for i in range(1_900_000)) + b',"model":"gpt-4o"}', json, chat),
        ("deep nesting", b'{"model":"gpt-4o","x":' + b"[" * (LIMIT - 60) + b"]" * 10 + b"}", json, chat),
        ("one 32 MiB string", b'{"model":"gpt-4o","x":"' + b"a" * (LIMIT - 40) + b'"}', json, chat),
        ("32 MiB string + lone surrogate (Python's json)", b'{"model":"gpt-4o","x":"' + b"a" * (LIMIT - 60) + b'\\ud800"}', json, chat),
        ("16M small numbers", b'{"model":"gpt-4o","x":[' + b"1," * ((LIMIT - 60) // 2) + b"1]}", json, chat),
        ("999,990 small numbers (under the item bound)", b'{"model":"gpt-4o","x":[' + b"1," * 999_990 + b"1]}", json, chat),
        ("999,990 \"model\" strings (walked)", b'{"model":"gpt-4o","x":[' + b'"model",' * 999_990 + b'"a"]}', json, chat),
        ("300,000 multipart parts", b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i
                                             for i in range(300_000)) + part + b"--b--\r\n", MULTIPART, audio),
        ("32 MiB file of CRLF-dashes", part + file_head + b"\r\n-" * ((LIMIT - 300) // 3) + b"\r\n--b--\r\n", MULTIPART, audio),
    ]


def main() -> None:
    settings = load_settings(env={"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_API_KEY": "k"})
    translator = Translator(compile_gateway(settings))
    for name, body, content_type, path in shapes():
        decision = translator.on_headers(RequestHead("POST", path, content_type, has_body=True, content_length=len(body)))
        assert isinstance(decision, AwaitBody), (name, decision)
        started = time.process_time()
        answer = decision.finish(body)
        cpu_ms = (time.process_time() - started) * 1000
        print(f"{name:50s} {len(body) / 2**20:5.1f} MiB {cpu_ms:8.1f} ms CPU -> {getattr(answer, 'status', 'forwarded')}")


if __name__ == "__main__":
    main()
