"""Local fakes of the endpoints Entra ID tokens come from, so that the real azure-identity code runs against them:
IMDS (a VM's or AKS pod's managed identity, via AZURE_POD_IDENTITY_AUTHORITY_HOST), App Service's identity endpoint
(IDENTITY_ENDPOINT + IDENTITY_HEADER) and an Entra authority's token endpoint (a service principal's client secret,
and workload identity's federated token, via AZURE_AUTHORITY_HOST). Each hands out RS256 JWTs for Azure OpenAI's
audience, signed by a key the test holds; the emulator checks them with its public half (--entra-public-key)."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "https://cognitiveservices.azure.com"
TENANT = "72f988bf-0000-4000-8000-000000000001"
APP_SERVICE_PATH = "/msi/token"
IDENTITY_HEADER = "app-service-identity-header-secret"


@dataclass
class TokenRequest:
    flavour: str  # imds | app_service | client_secret | workload_identity
    details: dict[str, str]
    token: str = ""


@dataclass
class FakeEntra:
    """One server for every flavour (HTTPS: azure-identity refuses an http:// authority)."""

    lifetime_s: int = 3600
    client_secret: str = "sp-secret-value"
    federated_token: str = "federated-service-account-token"
    down: bool = False  # every token request gets a 503, as from an endpoint in trouble
    requests: list[TokenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self._lock = threading.Lock()

    def issue(self, flavour: str, client_id: str | None) -> tuple[str, int]:
        now = int(time.time())
        token = jwt.encode({"aud": AUDIENCE, "iss": f"https://sts.windows.net/{TENANT}/", "iat": now, "nbf": now,
                            "exp": now + self.lifetime_s, "appid": client_id or "system-assigned",
                            "flavour": flavour, "jti": str(uuid.uuid4())}, self.key, algorithm="RS256")
        return token, now + self.lifetime_s

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def of(self, flavour: str) -> list[TokenRequest]:
        with self._lock:
            return [r for r in self.requests if r.flavour == flavour]

    def start(self, cert_file: str, key_file: str) -> RunningFake:
        return RunningFake(self, cert_file, key_file)


class RunningFake:
    def __init__(self, fake: FakeEntra, cert_file: str, key_file: str) -> None:
        handler = _handler(fake)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(fake: FakeEntra) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, document: dict) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _unavailable(self) -> bool:
            if fake.down:
                self._answer(503, {"error": "temporarily_unavailable", "error_description": "the fake is down"})
            return fake.down

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/metadata/identity/oauth2/token":  # IMDS
                if self.headers.get("Metadata") != "true" or query.get("api-version") != "2018-02-01":
                    return self._answer(400, {"error": "invalid_request", "error_description": "Required metadata header not specified"})
                if self._unavailable():
                    return None
                token, expires_on = fake.issue("imds", query.get("client_id"))
                fake.record(TokenRequest("imds", query, token))
                return self._answer(200, {"access_token": token, "expires_in": str(fake.lifetime_s),
                                          "expires_on": str(expires_on), "resource": query.get("resource", ""),
                                          "token_type": "Bearer"})
            if url.path == APP_SERVICE_PATH:  # App Service / Functions (2019-08-01)
                if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER or query.get("api-version") != "2019-08-01":
                    return self._answer(401, {"error": "unauthorized"})
                if self._unavailable():
                    return None
                token, expires_on = fake.issue("app_service", query.get("client_id"))
                fake.record(TokenRequest("app_service", query, token))
                return self._answer(200, {"access_token": token, "expires_on": str(expires_on),
                                          "resource": query.get("resource", ""), "token_type": "Bearer"})
            return self._answer(404, {"error": "not_found"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            length = int(self.headers.get("content-length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if url.path != f"/{TENANT}/oauth2/v2.0/token":
                return self._answer(404, {"error": "not_found"})
            if self._unavailable():
                return None
            if form.get("grant_type") != "client_credentials" or form.get("scope") != AUDIENCE + "/.default":
                return self._answer(400, {"error": "invalid_request", "error_description": "AADSTS900144"})
            if "client_assertion" in form:
                flavour, good = "workload_identity", form["client_assertion"] == fake.federated_token
            else:
                flavour, good = "client_secret", form.get("client_secret") == fake.client_secret
            if not good:
                return self._answer(401, {"error": "invalid_client",
                                          "error_description": "AADSTS7000215: Invalid client secret provided."})
            token, _ = fake.issue(flavour, form.get("client_id"))
            fake.record(TokenRequest(flavour, {k: v for k, v in form.items() if k not in ("client_secret", "client_assertion")}, token))
            return self._answer(200, {"token_type": "Bearer", "expires_in": fake.lifetime_s,
                                      "ext_expires_in": fake.lifetime_s, "access_token": token})

        def log_message(self, *args: object) -> None:
            pass

    return Handler
