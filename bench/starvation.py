"""Two attacker connections sending the costliest bodies found (a 32 MiB JSON body that only Python's
`json` reads, or a million `"model"` strings), beside a legitimate 10 req/s load, for 30 s, through the
real gateway (2 workers) and the emulator: does everyone else still get answered, and how fast?

    python -m bench.starvation [surrogate|strings]
"""

from __future__ import annotations

import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from extproc.emulator import EmulatorSettings
from extproc.envoy_config.devtls import ensure_dev_certificates
from tests.e2e.conftest import DEPLOYMENTS, SERVER_KEY, EmulatorThread, start_gateway, stop_gateway

LIMIT = 32 * 1024 * 1024
DURATION_S = 30.0
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def costly_body(kind: str) -> bytes:
    if kind == "surrogate":  # orjson refuses the lone surrogate: Python's json reads all 32 MiB
        return b'{"model":"gpt-4o","x":"' + b"a" * (LIMIT - 60) + b'\\ud800"}'
    return b'{"model":"gpt-4o","x":[' + b'"model",' * 999_990 + b'"a"]}'  # just under the item bound


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "surrogate"
    evil = costly_body(kind)
    directory = Path(tempfile.mkdtemp())
    pki = ensure_dev_certificates(directory / "pki", extra_names=("localhost",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    azure = EmulatorThread(EmulatorSettings(api_keys=(SERVER_KEY,), deployments=DEPLOYMENTS, ssl_context=context))
    gateway = start_gateway(directory, azure.url, pki.ca_cert, extproc="{workers: 2}",
                            limits=f"{{max_request_body_bytes: {LIMIT}}}")
    stop = time.monotonic() + DURATION_S
    attacks: list[tuple[int, float]] = []
    legit: list[tuple[object, float]] = []

    def attacker() -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < stop:
                started = time.monotonic()
                response = client.post(gateway.http_url + "/v1/chat/completions", content=evil,
                                       headers={"content-type": "application/json"})
                attacks.append((response.status_code, time.monotonic() - started))

    def legitimate() -> None:
        with httpx.Client(timeout=30) as client:
            due = time.monotonic()
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    status: object = client.post(gateway.http_url + "/v1/chat/completions", json=CHAT).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                legit.append((status, time.monotonic() - started))
                due += 0.1
                time.sleep(max(0.0, due - time.monotonic()))

    try:
        threads = [threading.Thread(target=attacker) for _ in range(2)] + [threading.Thread(target=legitimate)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop_gateway(gateway)
        azure.stop()
    latencies = sorted(seconds for _, seconds in legit)
    ok = sum(1 for status, _ in legit if status == 200)
    print(f"{kind}: {len(attacks)} attacker requests (mean {statistics.mean(s for _, s in attacks) * 1000:.0f} ms)")
    print(f"legitimate: {ok}/{len(legit)} ok, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
