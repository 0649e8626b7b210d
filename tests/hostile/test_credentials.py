"""Class 6: client credentials in every place a client (or an API gateway in front of it) puts them:
`?api-key=`, `?subscription-key=` and the other credential query parameters in any case or encoding,
`Authorization` in several schemes and spellings (twice, too), `Proxy-Authorization`, a client
`api-key` (twice), `x-api-key`, `api_key`, `Ocp-Apim-Subscription-Key`, `x-goog-api-key`, `Cookie`.

Whatever the route (decided from the body, from the headers, already in Azure form, answered by the
gateway itself, refused) none of them reaches the emulator, whose `api-key` is the server's alone;
none is echoed to the client; and the gateway's log (Envoy's access log included) never shows them,
checked when each gateway stops (conftest)."""

from __future__ import annotations

import random
from urllib.parse import quote

import pytest

from .support import (
    API_VERSION,
    CLIENT_KEY,
    Case,
    Expect,
    Report,
    basic_credential,
    chat_body,
    forwarded_to,
    new_secret,
    run_cases,
)

CASE_CLASS = "6 credential carriers"
CASES_PER_RUN = 70  # per protocol and policy
PROTOCOLS = ("http1-raw", "h2c", "h2-tls")

QUERY_NAMES = ("api-key", "API-KEY", "Api-Key", "api%2Dkey", "api%2dkey", "%61pi-key", "api-key%20", "subscription-key",
               "Subscription-Key", "subscription_key", "api_key", "apikey", "APIKEY", "key", "Key",
               "ocp-apim-subscription-key", "Ocp-Apim-Subscription-Key", "access_token", "access-token", "token",
               "sig", "code",
               # read as a credential by some reader: array syntax, a NUL, `;` as a separator
               "api-key[]", "api-key%5B%5D", "api-key%00", "foo=bar;api-key", "x=1;subscription-key")
BENIGN_QUERY = ("foo=bar", f"api-version={API_VERSION}", "limit=2", "x=", "after=file-1")


def header_carriers(rng: random.Random, secret: str) -> list[tuple[str, str]]:
    """One to four credential headers carrying `secret`."""
    choices = [
        [("Authorization", f"Bearer {secret}")], [("authorization", f"bearer {secret}")],
        [("AUTHORIZATION", f"BEARER   {secret}")], [("Authorization", basic_credential(secret))],
        [("Authorization", secret)], [("Authorization", f"Token {secret}")],
        [("Authorization", f"Bearer {secret}, {basic_credential(secret)}")],
        [("Authorization", f"Bearer {secret}"), ("Authorization", f"Bearer {secret}-2")],
        [("Proxy-Authorization", basic_credential(secret))], [("api-key", secret)], [("Api-Key", secret)],
        [("api-key", secret), ("api-key", secret + "-2")], [("x-api-key", secret)], [("X-API-KEY", secret)],
        [("api_key", secret)], [("Api_Key", secret)], [("x_api_key", secret)],
        [("Ocp-Apim-Subscription-Key", secret)], [("ocp-apim-subscription-key", secret)], [("x-goog-api-key", secret)],
        [("Cookie", f"session={secret}")], [("Cookie", f"a=1; token={secret}; b=2")],
        [("Cookie", f"a={secret}"), ("Cookie", f"b={secret}-2")],
        [("Authorization", f"Bearer {CLIENT_KEY}")], [("api-key", CLIENT_KEY)],
    ]
    return [header for pick in rng.sample(choices, rng.randint(1, 4)) for header in pick]


def query_carriers(rng: random.Random, secret: str) -> str:
    """A query with zero to three credential parameters carrying `secret` among ordinary ones."""
    params = [rng.choice(BENIGN_QUERY) for _ in range(rng.randint(0, 2))]
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        value = rng.choice((secret, secret, quote(secret, safe=""), CLIENT_KEY))
        params.insert(rng.randint(0, len(params)), f"{rng.choice(QUERY_NAMES)}={value}")
    return "?" + "&".join(params) if params else ""


def route(rng: random.Random, policy: str) -> tuple[str, str, bytes | None, list[tuple[str, str]], Expect, str | None]:
    """(method, path, body, headers, expected outcome, path upstream) for one kind of request."""
    json_type = [("content-type", "application/json")]
    kind = rng.randrange(9)
    if kind == 0:
        return "POST", "/v1/chat/completions", chat_body("gpt-4o"), json_type, Expect.FORWARDED, \
            "/openai/deployments/prod-chat/chat/completions"
    if kind == 1:  # an unknown model: refused under reject, sent to its own deployment under passthrough
        if policy == "reject":
            return "POST", "/v1/chat/completions", chat_body("nope-x"), json_type, Expect.REFUSED, None
        return "POST", "/v1/chat/completions", chat_body("nope-x"), json_type, Expect.FORWARDED, \
            "/openai/deployments/nope-x/chat/completions"
    if kind == 2:
        return "GET", rng.choice(("/v1/files", "/v1/batches")), None, [], Expect.FORWARDED, None
    if kind == 3:
        boundary = f"hostile{rng.getrandbits(32):x}"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--{boundary}\r\n'
                f'Content-Disposition: form-data; name="file"; filename="a.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
                f'{{"custom_id": "x"}}\n\r\n--{boundary}--\r\n').encode()
        return "POST", "/v1/files", body, [("content-type", f"multipart/form-data; boundary={boundary}")], \
            Expect.FORWARDED, "/openai/files"
    if kind == 4:
        path = "/openai/deployments/prod-chat/chat/completions"
        return "POST", path + f"?api-version={API_VERSION}", chat_body("prod-chat"), json_type, Expect.FORWARDED, path
    if kind == 5:
        return "POST", "/openai/v1/chat/completions", chat_body("prod-chat"), json_type, Expect.FORWARDED, \
            "/openai/v1/chat/completions"
    if kind == 6:  # answered by the gateway itself
        return "GET", rng.choice(("/v1/models", "/v1/models/gpt-4o")), None, [], Expect.ANSWERED, None
    if kind == 7:
        return "GET", "/v1/assistants", None, [], Expect.REFUSED, None
    return "DELETE", f"/v1/files/file-{rng.getrandbits(32):x}", None, [], Expect.FORWARDED, None


ANSWERS = {Expect.ANSWERED: frozenset({200}), Expect.REFUSED: frozenset({404})}


def generate(rng: random.Random, count: int, policy: str) -> list[Case]:
    cases = []
    for _ in range(count):
        method, path, body, headers, expect, upstream_path = route(rng, policy)
        secrets = [new_secret(rng) for _ in range(2)]
        carriers = header_carriers(rng, secrets[0])
        query = query_carriers(rng, secrets[1])
        if "?" in path and query:
            query = "&" + query[1:]
        all_headers = headers + carriers
        rng.shuffle(all_headers)
        label = f"{[n for n, _ in carriers]} and query {query!r} on {method} {path}"
        cases.append(Case(label, method, path + query, all_headers, body, expect, ANSWERS.get(expect),
                          secrets=tuple(secrets), upstream=forwarded_to(upstream_path) if upstream_path else None))
    return cases


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_client_credentials_never_reach_azure_nor_the_log(gateway_for, sender_for, upstream, report: Report, scale: int,
                                                          policy: str, protocol: str) -> None:
    rng = random.Random(f"credentials-{policy}-{protocol}")
    sender = sender_for(gateway_for(policy), protocol)
    run_cases(generate(rng, CASES_PER_RUN * scale, policy), sender, upstream, report)
    report.assert_clean()
