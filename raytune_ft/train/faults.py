"""Fault drills: kill a training worker while a run trains, to see ``scaling.max_failures`` bring it back.

Operators drill recovery before they trust it, and the resume tests and ``bench/resume_time.py``
use the same drill. A drill follows the run's ``metrics.jsonl`` and, once the run has logged a
given step, kills one live Ray Train worker process with SIGKILL (as the OOM killer or a lost
host would). It finds the workers through Ray's State API, so it needs ``ray.init`` first.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FaultDrill", "Kill", "TrainingWorker", "logged_steps", "training_workers", "wait_for_step"]

_WORKER_CLASS = "RayTrainWorker"


@dataclass(frozen=True, order=True)
class TrainingWorker:
    pid: int
    node_id: str


@dataclass(frozen=True)
class Kill:
    step: int
    """The newest step the run had logged when the worker was killed."""
    pid: int
    time: float
    """``time.time()`` of the kill; ``metrics.jsonl`` records carry the same clock."""
    logged: list[dict[str, float]]
    """What ``metrics.jsonl`` held just before the kill (the resumed run trims what follows its checkpoint)."""
    workers: list[TrainingWorker]
    """The live training workers at that moment (the first one was killed)."""


def logged_steps(run_dir: str | Path) -> list[dict[str, float]]:
    """The records of ``run_dir/metrics.jsonl`` (empty before the first log line)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return records


def wait_for_step(run_dir: str | Path, step: int, timeout: float, after: float = 0.0) -> dict[str, float]:
    """Block until the run logs ``step`` (at or after time ``after``); return that record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in logged_steps(run_dir):
            if record["step"] >= step and record["time"] >= after:
                return record
        time.sleep(0.1)
    raise TimeoutError(f"{run_dir}: step {step} was not logged within {timeout:.0f} s")


def training_workers() -> list[TrainingWorker]:
    """The live Ray Train worker processes of the connected cluster, by PID and node."""
    from ray.util.state import list_actors

    actors = list_actors(
        filters=[("class_name", "=", _WORKER_CLASS), ("state", "=", "ALIVE")], raise_on_missing_output=False
    )
    return sorted(TrainingWorker(pid=a.pid, node_id=a.node_id or "") for a in actors if a.pid)


@dataclass
class FaultDrill:
    """Kill one training worker each time the run in ``run_dir`` first logs a step in ``at_steps``.

    ``start()`` runs it on a thread next to ``run_training``; ``kills`` records what it did and
    ``error`` anything that stopped it.
    """

    run_dir: str | Path
    at_steps: list[int]
    timeout: float = 600.0
    kills: list[Kill] = field(default_factory=list)
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="raytune_ft-fault-drill", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            for step in self.at_steps:
                after = self.kills[-1].time if self.kills else 0.0
                record = wait_for_step(self.run_dir, step, self.timeout, after=after)
                self.kills.append(self._kill_one(int(record["step"]), logged_steps(self.run_dir)))
        except BaseException as err:  # reported to whoever started the drill
            self.error = err

    def _kill_one(self, step: int, logged: list[dict[str, float]]) -> Kill:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = training_workers()
            for worker in workers:
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:  # already gone; the State API lags
                    continue
                return Kill(step=step, pid=worker.pid, time=time.time(), logged=logged, workers=workers)
            time.sleep(0.2)
        raise TimeoutError("no live Ray Train worker to kill within 30 s")
