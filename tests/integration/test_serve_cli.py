"""``raytune-ft serve --checkpoint RUN_DIR`` as a user runs it: a subprocess on its own local Ray that
prints where it listens, answers the ``openai`` client with the run's adapter, and deletes its app
on SIGTERM, the signal ``ray job stop`` (and the panel's Stop) sends; Ctrl-C takes the same path.
The Hugging Face engine and the tiny model keep it fast; the vLLM path is test_serve_vllm.py."""

from __future__ import annotations

import os
import signal
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
        server.send_signal(signal.SIGTERM)  # the driver alone, as a stopped Ray job's
        out, _ = server.communicate(timeout=120)
        assert server.returncode == 0, out
        assert "stopping the endpoint" in out
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
