"""``raytune-ft serve --checkpoint RUN_DIR`` as a user runs it: a subprocess on its own local Ray that
prints where it listens, answers the ``openai`` client with the run's adapter, and deletes its app
on SIGTERM, the signal ``ray job stop`` (and the panel's Stop) sends; Ctrl-C takes the same path.
It serves with the default ``serve.ingress: auto``, which is HAProxy here (replicas answer HTTP themselves
behind it), and checks that every listener HAProxy opens is on 127.0.0.1; test_serve_hf.py covers Serve's
proxy. The Hugging Face engine and the tiny model keep it fast."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.integration


def test_serve_a_run_then_stop(tiny_model_dir: Path, tmp_path: Path, adapter_checkpoint: Any, free_port: Any) -> None:
    run = tmp_path / "saves" / "tiny-run"
    adapter_checkpoint(tiny_model_dir, run, 3, seed=1, source=str(tiny_model_dir))
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "raytune_ft.cli", "serve", "--checkpoint", str(run), "serve.engine=hf",
               f"serve.port={port}", "serve.max_tokens_limit=16"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert server.stdout is not None
        while time.monotonic() < deadline and not any("serving; Ctrl-C stops" in line for line in lines):
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                break
            lines.append(line)
        printed = "".join(lines)
        assert "ready in" in printed and f"http://127.0.0.1:{port}/v1" in printed, printed
        name = tiny_model_dir.name
        assert f"models: {name}, {name}:tiny-run, {name}:tiny-run:3" in printed, printed
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=f"{name}:tiny-run", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )
        assert reply.model == f"{name}:tiny-run:3" and reply.usage.completion_tokens == 4
        streamed = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=4, temperature=0, stream=True)  # fmt: skip
        assert sum(1 for chunk in streamed if chunk.choices and chunk.choices[0].delta.content) == 4
        assert "ingress: HAProxy" in printed, printed
        outside = _outside_address()
        assert not _reachable(outside, port), "the endpoint listens on 127.0.0.1 only"
        listening = _haproxy_listeners(server.pid)
        assert port in listening and len(listening) >= 3, listening  # the endpoint, stats, Prometheus
        assert set(listening.values()) == {"127.0.0.1"}, listening
        assert not any(_reachable(outside, p) for p in listening), listening
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)  # the driver alone, as a stopped Ray job's
        out, _ = server.communicate(timeout=120)
        assert time.monotonic() - stopping < 25, "replicas drain for 2 s, not direct ingress's default 30 s"
        assert server.returncode == 0, out
        assert "stopping the endpoint" in out
        assert not _reachable("127.0.0.1", port), "HAProxy went with the server"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _outside_address() -> str:
    """This machine's first non-loopback IPv4 address (the one Ray names its node by)."""
    import psutil

    found = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family == socket.AF_INET and not a.address.startswith("127.")]  # fmt: skip
    if not found:
        pytest.skip("no non-loopback address to check the binding against")
    return found[0]


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def _haproxy_listeners(root: int) -> dict[int, str]:
    """Port -> address of every socket the HAProxy processes under ``root`` listen on."""
    import psutil

    found = {}
    for process in psutil.Process(root).children(recursive=True):
        if process.name() == "haproxy":
            command = process.cmdline()
            assert command[command.index("-f") + 1].endswith("/haproxy.cfg"), "Ray finds its HAProxy by this path"
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found[conn.laddr.port] = conn.laddr.ip
    return found
