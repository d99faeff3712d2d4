"""``ray job submit`` is the cluster path: start a real Ray head on loopback with its own ports and
temp dir, submit ``raytune-ft train`` through the Jobs API with a working_dir, follow its logs to the
end, find the checkpoint, then stop that head by its own processes (never ``ray stop``, which would
stop every Ray on the machine)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from raytune_ft.models import checkpoint_step, is_adapter_checkpoint, latest_checkpoint

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PORT_FLAGS = (
    "port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
    "metrics-export-port", "node-manager-port", "object-manager-port", "runtime-env-agent-port",
)  # fmt: skip


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def processes_of(temp_dir: str) -> list[psutil.Process]:
    """Every process of the Ray instance whose session lives under ``temp_dir``, with descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
            found[proc.pid] = proc
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def stop(temp_dir: str) -> None:
    for proc in processes_of(temp_dir):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes_of(temp_dir), timeout=30)


def start_head(temp_dir: str) -> str:
    """``ray start --head`` on free loopback ports; returns the dashboard address."""
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    low = max(ports.values()) + 1  # worker ports above every other port (free_ports may hand out any)
    # `ray start` turns token auth on by default; this process's Ray client (like the local Ray of the other
    # tests) runs without it, so the head matches that.
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    start = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        f"--min-worker-port={low}", f"--max-worker-port={min(low + 200, 65535)}",
        *(f"--{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")
    return f"http://127.0.0.1:{ports['dashboard-port']}"


@pytest.fixture()
def ray_head() -> Iterator[str]:
    """A Ray head of our own: 127.0.0.1, free ports, a private temp dir; yields the dashboard address.
    A port taken between choosing and binding fails the start, which is tried again on new ports."""
    temp_dir = tempfile.mkdtemp(prefix="rtft-", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        for attempt in range(3):
            try:
                address = start_head(temp_dir)
                break
            except RuntimeError:
                stop(temp_dir)
                if attempt == 2:
                    raise
        yield address
    finally:
        stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_trains_and_checkpoints(ray_head: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "tiny.yaml").write_text(
        f"model: {{source: {tiny_model_dir}}}\n"
        "data: {dataset: identity, cutoff_len: 128}\n"
        "adapter: {rank: 8}\n"
        f"train: {{max_steps: 4, save_steps: 2, per_device_batch_size: 4, storage_path: {tmp_path / 'saves'},"
        " run_name: submitted}\n"
        "scaling: {num_workers: 2}\n"
    )
    client = JobSubmissionClient(ray_head)
    job = client.submit_job(
        entrypoint="raytune-ft train tiny.yaml",
        # Keys raytune-ft also sets for its workers, as cluster/runtime_env.yaml has: the job's win.
        runtime_env={
            "working_dir": str(workdir),
            "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        },
    )

    async def follow() -> str:
        return "".join([chunk async for chunk in client.tail_job_logs(job)])

    logs = asyncio.run(asyncio.wait_for(follow(), timeout=600))
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    assert "step 4/4 (100%)" in logs, logs[-3000:]
    checkpoint = latest_checkpoint(tmp_path / "saves" / "submitted")
    assert checkpoint_step(checkpoint) == 4 and is_adapter_checkpoint(checkpoint)


def test_dashboard_launch_submits_lists_tails_and_stops_a_job_on_a_cluster(
    ray_head: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The panel's Launch page (Streamlit's AppTest) pointed at a cluster address: bad commands are
    refused inline, a train job is submitted with its config's folder as working_dir, listed, its
    log tailed while it runs, and stopped."""
    from streamlit.testing.v1 import AppTest

    (tmp_path / "tiny.yaml").write_text(
        f"model: {{source: {tiny_model_dir}}}\n"
        "data: {dataset: identity, cutoff_len: 128}\n"
        f"train: {{max_steps: 2000, logging_steps: 1, storage_path: {tmp_path / 'saves'}, run_name: panel}}\n"
        "scaling: {num_workers: 1}\n"
    )
    app = AppTest.from_string("from raytune_ft.dashboard.views import launch\nlaunch.render()\n", default_timeout=120)
    app.session_state["ray_address"] = ray_head
    app.run()
    assert f"Jobs go to: {ray_head}" in app.caption[0].value and "No jobs yet" in app.info[0].value
    app.selectbox(key="launch_action").set_value("export")
    app.button[0].click().run()
    assert "export: choose a run or checkpoint folder" in app.error[0].value

    app.selectbox(key="launch_action").set_value("train")
    next(w for w in app.text_input if w.label == "Config YAML").set_value(str(tmp_path / "tiny.yaml"))
    next(w for w in app.text_input if w.label.startswith("Overrides")).set_value("adapter.rank=4")
    app.button[0].click().run()
    assert not app.error and "Submitted: raysubmit_" in app.success[0].value
    job = app.session_state["selected_job"]
    assert app.session_state["monitor_run"] == str(tmp_path / "saves" / "panel")

    def table() -> dict[str, str]:
        frame = app.dataframe[0].value
        return dict(zip(frame["job"], frame["status"], strict=True))

    deadline = time.monotonic() + 300
    while "step " not in app.code[-1].value and time.monotonic() < deadline:
        time.sleep(3)
        app.run()
    assert table()[job] == "RUNNING" and "step " in app.code[-1].value, app.code[-1].value[-2000:]
    next(b for b in app.button if b.label == "Stop job").click().run()
    assert "Stop requested" in app.info[0].value
    while table()[job] != "STOPPED" and time.monotonic() < deadline:
        time.sleep(2)
        app.run()
    assert table()[job] == "STOPPED"
