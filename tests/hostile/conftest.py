"""Fixtures of the hostile-input suite: the e2e emulator (TLS, one per session) and two real gateways
per module (`python -m extproc up`, the real Envoy), one with `unmapped_models: reject` and one with
`passthrough`, both with a small body limit and a 1 s body idle timeout.

A module may set GATEWAY_LIMITS (the `limits:` section) or GATEWAY_SECTIONS (other config sections)
for its own gateways. `--hostile-long` (or HOSTILE_LONG=1) runs ten times the generated cases; it is
an option of this directory: `pytest tests/hostile --hostile-long`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import (  # noqa: F401 - fixtures re-exported for this directory
    CLIENT_KEY,
    MODEL_MAP,
    SERVER_KEY,
    EmulatorThread,
    Gateway,
    azure,
    start_gateway,
    stop_gateway,
    upstream_pki,
    write_config,
)

from .support import MARKS, Report, Sender, Upstream

BODY_LIMIT = 1024 * 1024  # the smallest limit the schema allows (Envoy's own buffers are 1 MiB)
BODY_IDLE_S = 1
DEFAULT_LIMITS = f"{{max_request_body_bytes: {BODY_LIMIT}, body_idle_timeout_seconds: {BODY_IDLE_S}}}"
LONG_FACTOR = 10

# Cases run per class, for the summary at the end of the run.
CASE_COUNTS: Counter[str] = Counter()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hostile-long", action="store_true", default=False,
                     help=f"hostile-input suite: {LONG_FACTOR}x the generated cases")


@pytest.fixture(scope="session")
def scale(pytestconfig: pytest.Config) -> int:
    """How many times the default number of generated cases to run."""
    long = pytestconfig.getoption("--hostile-long", default=False) or os.environ.get("HOSTILE_LONG") == "1"
    return LONG_FACTOR if long else 1


@pytest.fixture(scope="session")
def upstream(azure: EmulatorThread) -> Upstream:  # noqa: F811 - the imported fixture
    return Upstream(azure)


def _start(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread,  # noqa: F811
           upstream_pki, policy: str) -> Gateway:  # noqa: F811
    sections = {"limits": getattr(request.module, "GATEWAY_LIMITS", DEFAULT_LIMITS),
                **getattr(request.module, "GATEWAY_SECTIONS", {}), "unmapped_models": policy}
    return start_gateway(tmp_path_factory.mktemp(f"hostile-{policy}"), azure.url, upstream_pki.ca_cert, **sections)


def _stop_and_check(gateway: Gateway) -> None:
    stop_gateway(gateway)
    assert gateway.process.returncode == 0, gateway.log.read_text()[-3000:]
    # Neither the server's key nor any client secret in what the gateway printed (access log included).
    log = gateway.log.read_text(errors="replace")
    leaked = [mark for mark in (*MARKS, SERVER_KEY) if mark in log]
    assert not leaked, f"the gateway log ({gateway.log}) shows secrets {leaked}: " + "".join(
        line for line in log.splitlines(keepends=True) if any(mark in line for mark in leaked))[:3000]


@pytest.fixture(scope="module")
def gateways(request, tmp_path_factory, azure, upstream_pki) -> Iterator[dict[str, Gateway]]:  # noqa: F811
    """The module's two gateways, `reject` and `passthrough`, started (and stopped) side by side."""
    with ThreadPoolExecutor(2) as pool:
        futures = {policy: pool.submit(_start, request, tmp_path_factory, azure, upstream_pki, policy)
                   for policy in ("reject", "passthrough")}
        started = {policy: future.result() for policy, future in futures.items()}
    yield started
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(_stop_and_check, gateway) for gateway in started.values()]:
            future.result()


@pytest.fixture(scope="module")
def reject_gateway(gateways: dict[str, Gateway]) -> Gateway:
    return gateways["reject"]


@pytest.fixture(scope="module")
def passthrough_gateway(gateways: dict[str, Gateway]) -> Gateway:
    return gateways["passthrough"]


@pytest.fixture
def gateway_for(request: pytest.FixtureRequest) -> Callable[[str], Gateway]:
    """`gateway_for("reject")` / `gateway_for("passthrough")`: that module's gateway."""
    return lambda policy: request.getfixturevalue(f"{policy}_gateway")


@pytest.fixture
def sender_for() -> Iterator[Callable[[Gateway, str], Sender]]:
    """`sender_for(gateway, protocol)`: a Sender, closed after the test."""
    made: list[Sender] = []

    def make(gateway: Gateway, protocol: str) -> Sender:
        made.append(Sender(gateway, protocol))
        return made[-1]

    yield make
    for sender in made:
        sender.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "case_class(name): the hostile-input class a test's cases count under")


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Report]:
    """The test's case report; its count goes to the summary under its case_class mark, else the
    module's CASE_CLASS."""
    result = Report(request.node.name)
    yield result
    mark = request.node.get_closest_marker("case_class")
    name = mark.args[0] if mark else getattr(request.module, "CASE_CLASS", request.module.__name__)
    CASE_COUNTS[name] += result.cases


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if CASE_COUNTS:
        terminalreporter.write_sep("-", f"hostile-input cases: {sum(CASE_COUNTS.values())}")
        for name, count in sorted(CASE_COUNTS.items()):
            terminalreporter.write_line(f"{count:7d}  {name}")
