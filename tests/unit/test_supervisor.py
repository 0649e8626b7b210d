"""extproc/runtime/supervisor.py and sockets.py: the worker supervisor (a dead worker is started again, a crash loop ends the
service) and the socket files (a stale one is removed, a live one is never taken over)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.runtime.sockets import socket_in_use
from extproc.runtime.supervisor import RestartPolicy, Supervisor

ROOT = Path(__file__).resolve().parents[2]


def _env(directory: Path, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "AOAI_GATEWAY_"))}
    env.update({
        "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com",
        "AZURE_OPENAI_API_KEY": "server-key",
        "AOAI_GATEWAY_STATE_DIR": str(directory / "state"),
        "AOAI_GATEWAY_SOCKET_DIR": str(directory / "run"),
        "AOAI_GATEWAY_WORKERS": str(workers),
    })
    return env


def _serving(path: Path) -> bool:
    if not path.is_socket():
        return False
    try:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _peer_pid(path: Path) -> int:
    """The pid of the process listening on `path` (Linux SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return pid


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(workers: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "extproc", "serve"], env=_env(tmp_path, workers), cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:  # the workers too, whatever happened
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED")
def test_a_killed_worker_is_started_again(serve, tmp_path: Path) -> None:
    process = serve(2)
    sockets = [tmp_path / "run" / f"extproc-{i}.sock" for i in range(2)]
    _wait(lambda: all(_serving(p) for p in sockets), 30, "both workers")
    victim, other = _peer_pid(sockets[1]), _peer_pid(sockets[0])
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: _serving(sockets[1]) and _peer_pid(sockets[1]) != victim, 10, "a new worker 1")
    assert _peer_pid(sockets[0]) == other  # the others are left alone
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    output = process.stdout.read().decode()  # type: ignore[union-attr]
    assert f"extproc-1 (pid {victim}) exited with -9; starting it again" in output
    assert not any(p.exists() for p in sockets)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_workers_exit_with_a_killed_supervisor(serve, tmp_path: Path) -> None:
    process = serve(2)
    sockets = [tmp_path / "run" / f"extproc-{i}.sock" for i in range(2)]
    _wait(lambda: all(_serving(p) for p in sockets), 30, "both workers")
    workers = [_peer_pid(p) for p in sockets]
    process.kill()
    process.wait()
    _wait(lambda: not any(socket_in_use(p) for p in sockets), 10, "the orphaned workers to stop")
    # Nothing listens any more, so the next start takes the sockets over.
    again = serve(2)
    _wait(lambda: all(_serving(p) for p in sockets), 30, "the restarted workers")
    assert not set(workers) & {_peer_pid(p) for p in sockets}
    again.send_signal(signal.SIGTERM)
    assert again.wait(15) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_a_hung_worker_exits_with_a_killed_supervisor(serve, tmp_path: Path) -> None:
    """A worker whose loop is stuck ignores SIGTERM: the death signal must be SIGKILL."""
    process = serve(2)  # (one worker is served in the process itself, without a supervisor)
    path = tmp_path / "run" / "extproc-1.sock"
    _wait(lambda: _serving(path), 30, "the worker")
    worker = _peer_pid(path)
    assert worker != process.pid
    os.kill(worker, signal.SIGSTOP)  # stands for a hang: no handler runs
    process.kill()
    process.wait()
    _wait(lambda: not _alive(worker), 10, "the hung worker to be killed")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stale_socket_file_does_not_prevent_start(serve, tmp_path: Path) -> None:
    path = tmp_path / "run" / "extproc-0.sock"
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(path))  # bound, never listening, closed: what a killed process leaves
    assert path.is_socket() and not socket_in_use(path)
    process = serve(1)
    _wait(lambda: _serving(path), 30, "the worker")
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0


def test_a_live_socket_is_not_taken_over(serve, tmp_path: Path) -> None:
    path = tmp_path / "run" / "extproc-0.sock"
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        process = serve(1)
        assert process.wait(30) == 1
        assert b"another process is serving on this socket" in process.stdout.read()  # type: ignore[union-attr]
        assert path.is_socket()


def _exiting(code: int) -> Callable[[int], multiprocessing.process.BaseProcess]:
    context = multiprocessing.get_context("spawn")
    return lambda slot: context.Process(target=os._exit, args=(code,), name=f"w{slot}")


def test_a_crash_loop_ends_the_service_with_an_error(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(_exiting(3), 2, RestartPolicy(first_delay_s=0.01, crash_limit=2))
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < 20
    assert "exited with 3, 3 times within 60 s: stopping every worker" in caplog.text


def test_stop_during_a_restart_delay_returns_at_once() -> None:
    supervisor = Supervisor(_exiting(3), 1, RestartPolicy(first_delay_s=60))
    previous = signal.signal(signal.SIGUSR1, lambda _signum, _frame: supervisor.stop())
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        started = time.monotonic()
        assert supervisor.run() == 0
        assert time.monotonic() - started < 10
    finally:
        signal.signal(signal.SIGUSR1, previous)
