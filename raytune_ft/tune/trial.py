"""One sweep trial: a whole distributed TorchTrainer run launched from inside a Ray Tune trial.

The trial's Ray Train run reports to its controller; a callback there forwards each report that
carries the sweep's metric through a queue to this function, which reports it to Tune with a small
*pointer* checkpoint (a file naming the run's real checkpoint). Tune's schedulers then see the
training steps as results, and PBT can clone a trial's state without copying its weights.
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from raytune_ft.config import JobConfig
from raytune_ft.models import CheckpointError
from raytune_ft.rl.launch import worker_setup
from raytune_ft.train import JobData, RunPlan, build_trainer

__all__ = ["POINTER_FILE", "ForwardReports", "checkpoint_of", "run_trial"]

POINTER_FILE = "pointer.json"
"""The one file of a trial's Tune checkpoint: ``{"checkpoint": <the Ray Train checkpoint's path>}``."""


def run_trial(
    values: dict[str, Any],
    *,
    base: dict[str, Any],
    datasets: dict[str, Any],
    rows: int | None,
    cpus: float,
    trials_dir: str,
    metric: str,
) -> None:
    """Tune's function trainable: train ``base`` with the drawn ``values`` on ``cpus`` per worker,
    forwarding the reports that carry ``metric``.

    The run lives in ``trials_dir/<trial id>``; a trial continued from another trial's checkpoint
    (PBT) starts a new run ``<trial id>-<n>`` from it.
    """
    from ray import tune

    from .space import trial_config

    trial_id = tune.get_context().get_trial_id()
    name, start_from = _run_name(trials_dir, trial_id, tune.get_checkpoint())
    cfg = trial_config(JobConfig.model_validate(base), values, name, trials_dir)
    total_steps = JobData(datasets, rows).total_steps(cfg)
    run_dir = f"{trials_dir}/{name}"
    has_eval = "eval" in datasets
    setup = worker_setup(cfg)
    threads = setup.threads(cfg, cpus, cpus)  # trials run side by side: each keeps to its own CPUs
    plan = RunPlan(total_steps, run_dir, has_eval=has_eval, threads=threads, start_from=start_from, report_logs=True)
    reports = _queue()
    with setup.actors(cfg) as feed:  # an online trial's own rollout engines
        forward = [ForwardReports(reports, metric)]
        trainer = build_trainer(cfg, plan, datasets, cpus, trials_dir, name, forward, loop=setup.loop, feed=feed)
        _fit_forwarding(trainer, reports, {"total_steps": total_steps, "run_dir": run_dir}, metric)


def _queue() -> Any:
    from ray.util.queue import Queue

    return Queue(maxsize=1, actor_options={"num_cpus": 0})


def _run_name(trials_dir: str, trial_id: str, checkpoint: Any) -> tuple[str, str | None]:
    """The trial's run name, and the checkpoint to start it from when it is not its own."""
    if checkpoint is None:
        return trial_id, None  # a new trial, or one interrupted before its first checkpoint
    path = checkpoint_of(checkpoint)
    run = Path(path).parent.name
    if run == trial_id or run.startswith(f"{trial_id}-"):
        return run, None  # the sweep was interrupted: Ray Train resumes this run from its newest checkpoint
    if not Path(path).is_dir() and "://" not in path:
        raise CheckpointError(
            f"trial {trial_id} was to continue from {path}, which no longer exists: train.save_total_limit deleted "
            "it; PBT clones other trials' checkpoints, so raise save_total_limit or leave it unset"
        )
    taken = sum(1 for _ in Path(trials_dir).glob(f"{trial_id}-*"))
    return f"{trial_id}-{taken + 1}", path


def checkpoint_of(pointer: Any) -> str:
    """The Ray Train checkpoint path a trial's Tune checkpoint points to."""
    with pointer.as_directory() as folder:
        return str(json.loads((Path(folder) / POINTER_FILE).read_text())["checkpoint"])


def _fit_forwarding(trainer: Any, reports: Any, extra: dict[str, Any], metric: str) -> None:
    """Run ``trainer.fit()`` in a thread while reporting what ``ForwardReports`` queues to Tune.

    A run that had already reached its last step (its sweep was interrupted after the run finished
    but before Tune heard of it) trains nothing and reports nothing; its final result is forwarded
    from Ray Train's own record of the run instead.
    """
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            outcome.append(trainer.fit())
        except BaseException as err:  # re-raised in the trial's own thread below
            failure.append(err)

    thread = threading.Thread(target=fit, name="raytune_ft-trial-fit", daemon=True)
    thread.start()
    last_step = None
    while thread.is_alive() or not reports.empty():
        item = _next(reports)
        if item is not None:
            _report({**item["metrics"], **extra}, item["checkpoint"])
            last_step = item["metrics"].get("step")
    thread.join()
    if failure:
        raise failure[0]
    final = outcome[0]
    if last_step != extra["total_steps"] and metric in (final.metrics or {}):
        _report({**final.metrics, **extra}, final.checkpoint.path if final.checkpoint else None)


def _next(reports: Any) -> dict[str, Any] | None:
    from ray.util.queue import Empty

    try:
        item: dict[str, Any] = reports.get(timeout=1.0)
    except (Empty, queue.Empty):
        return None
    return item


def _report(metrics: dict[str, Any], checkpoint: str | None) -> None:
    """``tune.report`` with, for a new checkpoint, a pointer checkpoint naming it."""
    from ray import tune

    if checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="raytune_ft-pointer-") as folder:
        (Path(folder) / POINTER_FILE).write_text(json.dumps({"checkpoint": checkpoint}))
        tune.report({**metrics, "checkpoint_path": checkpoint}, checkpoint=tune.Checkpoint.from_directory(folder))


class ForwardReports(UserCallback):
    """Ray Train callback (runs in the run's controller): queue each report carrying ``metric``,
    merged over the reports before it (the last training loss travels with an eval report), with the
    newest checkpoint written since the last one queued."""

    def __init__(self, reports: Any, metric: str) -> None:
        super().__init__()
        self.reports = reports
        self.metric = metric
        self.latest: dict[str, Any] = {}
        self.pending: str | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.latest.update(metrics[0])  # rank 0's; every worker reports the same reduced values
        if checkpoint is not None:
            self.pending = checkpoint.path
        if self.metric in metrics[0]:
            self.reports.put({"metrics": dict(self.latest), "checkpoint": self.pending})
            self.pending = None
