"""Classes 4 and 5: requests already in Azure form (`/openai/...`).

4. Under `unmapped_models: reject`, an Azure-form path that some reader could take for the unmapped
   deployment `secret-dep` (`deployments./`, `;x=1`, `%20`, trailing dots, case variants of
   `deployments`, empty segments, dot segments, encoded letters and slashes, backslashes) is refused;
   nothing reaches the emulator. Plain paths to mapped deployments still go through.
5. Methods other than GET, POST, DELETE on `/openai/*` (TRACE, PUT, PATCH, OPTIONS, PROPFIND, HEAD,
   lowercase `post`, made-up ones) get 405 from the gateway, or Envoy's own 400 for a method it
   refuses to parse; never forwarded, under either policy.

The request target and method go on the wire exactly as generated: raw HTTP/1.1 bytes, and HTTP/2
frames by hand (h2c and h2 over TLS)."""

from __future__ import annotations

import json
import random

import pytest

from .support import (
    API_VERSION,
    Case,
    Expect,
    Report,
    chat_body,
    forwarded_to,
    new_secret,
    run_cases,
    run_in_parallel,
)

CASE_CLASS = "4+5 Azure-form paths and methods"
PATH_CASES_PER_RUN = 160  # per protocol
METHOD_CASES_PER_RUN = 45  # per protocol and policy
PROTOCOLS = ("http1-raw", "h2c-raw", "h2-tls-raw")

DEPLOYMENTS_SEGMENT = (
    "deployments.", "deployments..", "deployments;x=1", "deployments;", "deployments%20", "%20deployments",
    "deployments%2e", "deployments%2E", "Deployments", "DEPLOYMENTS", "dEpLoYmEnTs", "deployment%73", "%64eployments",
    "deployments%00", "deployments%09", "deployments/", "/deployments", "deployments/.", "./deployments",
    "deployments/prod-chat/..", "deployments\\", "deployments%5C", "deployments%3B", "deployments~", "deployments%7E",
    "deployments.%20", "deployments%2F", "deployments/x/../", "x/../deployments",
    "deploy%6Dents", "DEPLOYMENTS.", "deployments,", "deployments:",
)
SECRET_SEGMENT = (
    "secret-dep", "secret-dep.", "secret-dep..", "secret-dep;x=1", "secret-dep%20", "%20secret-dep", "secret-dep%2e",
    "SECRET-DEP", "Secret-Dep", "secret%2Ddep", "%73ecret-dep", "prod-chat/../secret-dep", "prod-chat%2F..%2Fsecret-dep",
    "prod-chat\\..\\secret-dep", "secret-dep%00", "prod-chat;/../secret-dep", "secret-dep/", "/secret-dep",
    "secret-dep%2F", "./secret-dep", "prod-chat/%2e%2e/secret-dep", "prod-chat/.%2e/secret-dep", "secret-dep%09",
    "secret-dep.%2e", "secret-dep~", "prod-chat%5C..%5Csecret-dep", "secret-dep%3F", "secret-dep%23", "secret-dep#x",
    "secret-dep?x=", "secret-dep%u002e",
)
# Raw whitespace, controls or non-ASCII in the target: malformed on every protocol. Over HTTP/2 Envoy
# closes the connection after its 1 s close delay instead of answering, so these run in parallel.
RAW_SEGMENTS = ("deployments /secret-dep", "deployments\t/secret-dep", "deployments/secret-dep\u00a0",
                "deployments/secret\u2010dep", "deployments/secret-dep\x00", "deployments/secret-dep\x7f",
                "deployments/secret-dep\x0b", "deployments\x0c/secret-dep", "deployments/ secret-dep")
OPERATIONS = ("chat/completions", "embeddings", "completions", "audio/transcriptions", "images/generations",
              "chat/completions/", "chat//completions", "chat/completions/.")
QUERIES = (f"?api-version={API_VERSION}", "", f"?api-version={API_VERSION}&deployment=prod-chat",
           "?x=/openai/deployments/prod-chat/chat/completions", "?api-version=2025-04-01-preview&x=1#frag")


def path_case(rng: random.Random) -> Case:
    secret = new_secret(rng)
    roll = rng.random()
    if roll < 0.08:  # a control: a mapped deployment, plainly
        method = rng.choice(("POST", "GET", "DELETE"))
        path = f"/openai/deployments/prod-chat/chat/completions"
        body = chat_body("prod-chat") if method == "POST" else None
        return Case("control: prod-chat", method, path + f"?api-version={API_VERSION}",
                    [("content-type", "application/json"), ("api-key", secret)], body, Expect.FORWARDED,
                    upstream=forwarded_to(path), secrets=(secret,))
    deployments = "deployments" if roll < 0.35 else rng.choice(DEPLOYMENTS_SEGMENT)
    dep = rng.choice(SECRET_SEGMENT) if roll >= 0.2 else "secret-dep"
    target = "/openai/" + deployments + "/" + dep + "/" + rng.choice(OPERATIONS) + rng.choice(QUERIES)
    if rng.random() < 0.15:
        target = target.replace("/openai/", rng.choice(("/openai//", "//openai/", "/openai/./", "/x/../openai/")), 1)
    method = rng.choice(("POST", "POST", "GET", "DELETE"))
    body = chat_body(rng.choice(("prod-chat", "secret-dep", "gpt-4o"))) if method == "POST" else None
    return Case(f"Azure-form path trick {deployments!r} / {dep!r}", method, target,
                [("content-type", "application/json"), ("authorization", f"Bearer {secret}")], body,
                Expect.REFUSED, secrets=(secret,))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_azure_form_path_tricks_never_reach_an_unmapped_deployment(gateway_for, sender_for, upstream, report: Report,
                                                                   scale: int, protocol: str) -> None:
    rng = random.Random(f"azure-paths-{protocol}")
    sender = sender_for(gateway_for("reject"), protocol)
    run_cases([path_case(rng) for _ in range(PATH_CASES_PER_RUN * scale)], sender, upstream, report)
    report.assert_clean()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_raw_whitespace_and_controls_in_the_target_are_refused(gateway_for, sender_for, upstream, report: Report,
                                                               protocol: str) -> None:
    """Refused (HTTP/1.1: Envoy's 400) or dropped (HTTP/2: a protocol error): never forwarded."""
    sender = sender_for(gateway_for("reject"), protocol)
    rng = random.Random(f"raw-targets-{protocol}")
    cases = []
    for segments in RAW_SEGMENTS:
        secret = new_secret(rng)
        cases.append(Case(f"raw bytes in the target {segments!r}", "POST",
                          f"/openai/{segments}/chat/completions?api-version={API_VERSION}",
                          [("content-type", "application/json"), ("authorization", f"Bearer {secret}")],
                          chat_body("prod-chat"), Expect.NOT_FORWARDED, secrets=(secret,)))
    run_in_parallel(cases, sender.send, upstream, report, protocol)
    report.assert_clean()


# --- class 5: methods ---------------------------------------------------------------------------------

METHODS = ("TRACE", "PUT", "PATCH", "OPTIONS", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
           "SEARCH", "QUERY", "PURGE", "LINK", "UNLINK", "REPORT", "HEAD", "post", "get", "delete", "Post", "GeT",
           "FOO", "M-SEARCH", "BREW", "X" * 80, "POST2", "DEL")
AZURE_PATHS = (
    f"/openai/deployments/prod-chat/chat/completions?api-version={API_VERSION}",
    f"/openai/deployments/secret-dep/chat/completions?api-version={API_VERSION}",
    "/openai/v1/chat/completions", "/openai/v1/responses", "/openai/files", "/openai/files/file-1",
    f"/openai/responses/resp_1?api-version={API_VERSION}", "/openai/batches", "/openai/v1/models",
    f"/openai/deployments/prod-embed/embeddings?api-version={API_VERSION}",
)


def method_case(rng: random.Random) -> Case:
    secret = new_secret(rng)
    method = rng.choice(METHODS)
    path = rng.choice(AZURE_PATHS)
    with_body = method.upper() not in ("HEAD", "TRACE", "GET") and rng.random() < 0.7
    body = chat_body(rng.choice(("prod-chat", "secret-dep"))) if with_body else None
    headers = [("content-type", "application/json"), rng.choice((("authorization", f"Bearer {secret}"), ("api-key", secret)))]
    return Case(f"method {method}", method, path, headers, body, Expect.REFUSED, frozenset({405, 400}), secrets=(secret,),
                answer_check=says_the_method if method.upper() != "HEAD" else None)


def says_the_method(answer) -> str | None:
    if answer.status == 405:
        message = json.loads(answer.body)["error"]["message"]
        if "GET, POST or DELETE" not in message:
            return f"405 without naming the allowed methods: {message!r}"
    return None


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_other_methods_on_azure_paths_are_never_forwarded(gateway_for, sender_for, upstream, report: Report,
                                                          scale: int, policy: str, protocol: str) -> None:
    rng = random.Random(f"methods-{policy}-{protocol}")
    sender = sender_for(gateway_for(policy), protocol)
    run_cases([method_case(rng) for _ in range(METHOD_CASES_PER_RUN * scale)], sender, upstream, report)
    report.assert_clean()
