"""`python -m extproc up` while it starts: a stop signal ends the wait for readiness at once and
stops every child; a dead child ends it too. Envoy is a stand-in that never becomes ready."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from extproc.runtime.sockets import socket_in_use
from extproc.runtime.processes import free_port
from extproc.runtime.up import Child, Stack, StopRequested

ROOT = Path(__file__).resolve().parents[2]
# Passes `envoy --mode validate`; otherwise records its pid and never becomes ready.
FAKE_ENVOY = """#!/bin/sh
[ "$1" = "--mode" ] && exit 0
echo $$ > "$FAKE_ENVOY_PID.tmp" && mv "$FAKE_ENVOY_PID.tmp" "$FAKE_ENVOY_PID"
exec sleep 600
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")  # a zombie is gone


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_waiting_for_envoy_stops_everything(tmp_path: Path, stop_signal: signal.Signals) -> None:
    fake = tmp_path / "fake-envoy"
    fake.write_text(FAKE_ENVOY)
    fake.chmod(0o755)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listen: {{address: 127.0.0.1, http_port: {free_port()}, https_port: null}}\n"
        f"envoy: {{admin_port: {free_port()}, concurrency: 1, binary: {fake}}}\n"
        "extproc: {workers: 2}\n"
        f"metrics: {{port: {free_port()}}}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "AOAI_GATEWAY_"))}
    env.update({"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "AZURE_OPENAI_API_KEY": "k",
                "FAKE_ENVOY_PID": str(tmp_path / "envoy.pid")})
    # Its own process group: should up fail to stop its children, the test still can.
    up = subprocess.Popen([sys.executable, "-m", "extproc", "--config", str(config), "up"], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "envoy.pid").exists():  # up now waits for Envoy's /ready
            assert up.poll() is None and time.monotonic() < deadline, up.communicate()[0].decode()
            time.sleep(0.05)
        envoy_pid = int((tmp_path / "envoy.pid").read_text())
        up.send_signal(stop_signal)
        assert up.wait(10) == 0, up.communicate()[0].decode()
    finally:
        try:
            os.killpg(up.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        up.wait()
    output = up.stdout.read().decode()  # type: ignore[union-attr]
    assert "error" not in output.lower(), output
    assert not _alive(envoy_pid)
    assert not any(socket_in_use(p) for p in (tmp_path / "state" / "run").glob("*.sock"))


def _child(argv: list[str]) -> Child:
    return Child("child", subprocess.Popen(argv))


def test_wait_until_stops_at_a_stop_request() -> None:
    stack = Stack(stop_requested=True)
    started = time.monotonic()
    with pytest.raises(StopRequested):
        stack.wait_until(lambda: False, "nothing")
    assert time.monotonic() - started < 1


def test_wait_until_stops_when_a_child_dies() -> None:
    stack = Stack(children=[_child([sys.executable, "-c", "raise SystemExit(3)"])])
    with pytest.raises(RuntimeError, match="child exited with 3 while waiting for nothing"):
        stack.wait_until(lambda: False, "nothing", timeout_s=30)


def test_a_stack_stopping_starts_nothing() -> None:
    stack = Stack(stop_requested=True)
    with pytest.raises(StopRequested):
        stack.start("child", [sys.executable, "-c", "pass"], dict(os.environ))
    assert not stack.children


def test_up_refuses_to_start_beside_a_running_ext_proc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from extproc.config import load_settings
    from extproc.runtime.up import run_up

    settings = load_settings(env={"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "AZURE_OPENAI_API_KEY": "k",
                                  "AOAI_GATEWAY_STATE_DIR": str(tmp_path), "AOAI_GATEWAY_WORKERS": "1"})
    path = settings.socket_paths()[0]
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        assert run_up(settings.model_copy(update={"envoy": settings.envoy.model_copy(update={"binary": "true"})}), None) == 1
    assert "another ext_proc is serving on" in capsys.readouterr().err
    assert not (tmp_path / "envoy.yaml").exists() and not (tmp_path / "tls").exists()  # nothing written


def test_a_second_up_on_the_same_state_dir_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A running gateway's files (its Envoy config, certificates) are left alone by a refused start."""
    from extproc.config import load_settings
    from extproc.runtime.up import lock_state_dir, run_up

    settings = load_settings(env={"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "AZURE_OPENAI_API_KEY": "k",
                                  "AOAI_GATEWAY_STATE_DIR": str(tmp_path), "AOAI_GATEWAY_WORKERS": "1"})
    running = lock_state_dir(settings)  # as the first `up` holds it
    (tmp_path / "envoy.yaml").write_text("the running gateway's config\n")
    try:
        other_ports = settings.listen.model_copy(update={"http_port": free_port(), "https_port": free_port()})
        assert run_up(settings.model_copy(update={"listen": other_ports}), None) == 1
    finally:
        running.close()
    assert (tmp_path / "envoy.yaml").read_text() == "the running gateway's config\n"
    assert not (tmp_path / "tls").exists() and not (tmp_path / "run").exists()
    error = capsys.readouterr().err
    assert f"(pid {os.getpid()})" in error and "state_dir" in error and "AOAI_GATEWAY_STATE_DIR" in error
