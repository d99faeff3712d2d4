"""Launch: CLI commands submitted as Ray jobs through the Jobs API (``JobSubmissionClient``).

A job is the very command a user would type (``raytune-ft train CONFIG key=value``), so what the
panel launches behaves as it does under ``ray job submit``. Without a cluster address the panel
starts its own local Ray, which lives as long as the panel; its jobs run in the panel's folder with
the panel's Python, so relative paths in configs mean the same as on the command line. For a cluster
address the config's folder is uploaded as the job's ``working_dir`` and ``raytune-ft`` on the
cluster runs it.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import InputError, load_config

__all__ = ["ACTIONS", "JobRow", "cluster_nodes", "command_args", "job_client", "list_jobs", "local_ray_address",
           "run_dir_of", "stop_job", "submit", "tail_logs"]  # fmt: skip

ACTIONS = ("train", "tune", "eval", "export", "serve")
"""The CLI commands the panel submits."""
_NEEDS_CHECKPOINT = ("eval", "export")
_TAIL_LINES = 400
_AGENT_WAIT_S = 60.0
_LOCAL: dict[str, Any] = {}
_LOCAL_LOCK = threading.Lock()


@dataclass(frozen=True)
class JobRow:
    submission_id: str
    status: str
    """``PENDING``, ``RUNNING``, ``STOPPED``, ``SUCCEEDED`` or ``FAILED``."""
    action: str
    entrypoint: str
    start_time: float | None
    """Seconds since the epoch."""
    run_dir: str | None
    """Where the job's run writes ``metrics.jsonl`` and checkpoints (train and tune jobs)."""
    message: str


def local_ray_address() -> str:
    """The Jobs API address of the panel's own Ray (started on first use; joined if ``RAY_ADDRESS`` is set).

    Ray starts its GCS and raylet with PR_SET_PDEATHSIG, which fires when the starting *thread* ends,
    and Streamlit runs each page in a short-lived thread; so Ray is started by a thread that lives as
    long as the panel.
    """
    with _LOCAL_LOCK:
        if not _LOCAL:
            ready = threading.Event()
            threading.Thread(target=_keep_ray, args=(ready,), name="raytune-ft-local-ray", daemon=True).start()
            ready.wait()
    if "error" in _LOCAL:
        raise _LOCAL["error"]
    return str(_LOCAL["address"])


def _keep_ray(ready: threading.Event) -> None:
    import ray._private.worker

    from raytune_ft.train import start_ray

    try:
        start_ray(None)
        _LOCAL["address"] = f"http://{ray._private.worker.get_dashboard_url()}"
    except Exception as err:  # handed to the caller
        _LOCAL["error"] = err
    ready.set()
    threading.Event().wait()  # never returns: Ray's processes live while this thread does


def job_client(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address`` (``http://host:8265``), or a clear error when none answers."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise InputError(f"no Ray Jobs API at {address} ({err}); give the head's dashboard address, "
                         "e.g. http://127.0.0.1:8265") from None  # fmt: skip


def command_args(
    action: str, config: str | None, overrides: list[str], checkpoint: str | None = None, out: str | None = None
) -> list[str]:
    """``raytune-ft`` arguments for ``action``; what each command needs is checked here, before submitting."""
    if action not in ACTIONS:
        raise InputError(f"unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
    if action in ("train", "tune") and not config:
        raise InputError(f"{action}: choose a config YAML (save one on the Configure page)")
    if action in _NEEDS_CHECKPOINT and not checkpoint:
        raise InputError(f"{action}: choose a run or checkpoint folder")
    if action == "export" and not out:
        raise InputError("export: give the destination folder")
    if action == "serve" and not (config or checkpoint):
        raise InputError("serve: choose a config YAML or a run to serve")
    args = [action, *([config] if config else []), *overrides]
    args += ["--checkpoint", checkpoint] if checkpoint else []
    return args + (["--out", out] if out else [])


def run_dir_of(config: str | None, overrides: list[str], base: Path) -> str | None:
    """``storage_path/run_name`` of a config, resolved against ``base`` (None for an unreadable config)."""
    if not config:
        return None
    try:
        train = load_config(base / config, overrides).train
    except InputError:
        return None
    return str((base / train.storage_path / train.run_name).resolve()) if "://" not in train.storage_path else None


def submit(
    client: Any, args: list[str], local: bool, cwd: Path, run_dir: str | None = None, config: str | None = None
) -> str:
    """Submit ``raytune-ft ARGS`` (``config``: the config YAML among them); returns the submission id."""
    metadata = {"raytune_ft": args[0], **({"run_dir": run_dir} if run_dir else {})}
    if local:  # the panel's own Ray: this Python, this folder, absolute paths
        entry = f"cd {shlex.quote(str(cwd))} && {shlex.quote(sys.executable)} -m raytune_ft.cli {shlex.join(args)}"
        return _submit_when_ready(client, entrypoint=entry, metadata=metadata)
    runtime_env = {"working_dir": str((cwd / config).parent)} if config else {}
    remote = [Path(arg).name if arg == config else arg for arg in args]
    return _submit_when_ready(client, entrypoint=f"raytune-ft {shlex.join(remote)}", runtime_env=runtime_env,
                              metadata=metadata)  # fmt: skip


def _submit_when_ready(client: Any, **job: Any) -> str:
    """``submit_job``, retried while a just-started head's job agent has not registered yet (HTTP 500
    "No available agent to submit job, please try again later", seen for seconds after ``ray.init``)."""
    deadline = time.monotonic() + _AGENT_WAIT_S
    while True:
        try:
            return str(client.submit_job(**job))
        except RuntimeError as err:
            if "try again later" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def list_jobs(client: Any) -> list[JobRow]:
    """Every job the cluster knows, newest first."""
    rows = [
        JobRow(
            submission_id=str(job.submission_id),
            status=str(getattr(job.status, "value", job.status)),
            action=(job.metadata or {}).get("raytune_ft", "-"),
            entrypoint=job.entrypoint,
            start_time=job.start_time / 1000 if job.start_time else None,
            run_dir=(job.metadata or {}).get("run_dir"),
            message=job.message or "",
        )
        for job in client.list_jobs()
        if job.submission_id
    ]
    return sorted(rows, key=lambda row: row.start_time or 0.0, reverse=True)


def stop_job(client: Any, submission_id: str) -> bool:
    """Ask the job to stop (SIGTERM, then SIGKILL after Ray's grace period); False if it had ended."""
    return bool(client.stop_job(submission_id))


def tail_logs(client: Any, submission_id: str, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of the job's driver output."""
    return "\n".join(str(client.get_job_logs(submission_id)).splitlines()[-lines:])


def cluster_nodes(address: str) -> list[dict[str, Any]]:
    """Per alive node: its address and total resources (CPU, GPU, memory in GiB), from the State API."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    try:
        nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    except RayStateApiException as err:
        raise InputError(f"no Ray State API at {address} ({type(err).__name__}); give the head's dashboard "
                         "address, e.g. http://127.0.0.1:8265") from None  # fmt: skip
    rows = []
    for node in nodes:
        total = dict(node.resources_total or {})
        rows.append({
            "node": node.node_ip, "head": bool(node.is_head_node), "CPU": total.get("CPU", 0.0),
            "GPU": total.get("GPU", 0.0), "memory_GiB": round(total.get("memory", 0.0) / 2**30, 1),
        })  # fmt: skip
    return rows
