"""Experiment trackers (Weights & Biases, MLflow, TensorBoard), fed by rank 0 with what it logs.

Each backend is a small class behind one protocol, chosen by name from ``tracking.backends``; the
training loop calls ``log`` wherever it appends to ``metrics.jsonl``, so every tracker sees the
same records: loss, lr, tokens/s, eval metrics. The resolved config is recorded once per run.
Nothing here may block training on a network or a prompt: wandb is offline unless an API key is
configured, MLflow writes a local file store unless given a tracking URI.

``plot_loss`` draws the run's loss curve (``loss.png``) from ``metrics.jsonl`` when training ends.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from raytune_ft.config import ConfigError, JobConfig, dump_config

__all__ = ["LOSS_PLOT", "TRACKERS", "RunInfo", "Tracker", "Trackers", "open_trackers", "plot_loss"]

LOSS_PLOT = "loss.png"


@dataclass(frozen=True)
class RunInfo:
    cfg: JobConfig
    run_dir: Path
    """Local ``storage_path/run_name``."""
    resumed_step: int
    """The step a resumed run continues after (0 for a new run)."""


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, int | float)}


class _Wandb:
    """Offline unless ``WANDB_API_KEY`` is set or ``tracking.wandb_mode`` says online; resumes the run by name."""

    def __init__(self, run: RunInfo) -> None:
        import wandb

        tracking = run.cfg.tracking
        mode = tracking.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            raise ConfigError("tracking.wandb_mode online needs WANDB_API_KEY in the workers' environment")
        self.run = wandb.init(
            project=tracking.project,
            name=run.cfg.train.run_name,
            id=_wandb_id(run.cfg.train.run_name),
            resume="allow",
            dir=str(run.run_dir),
            mode=mode,
            config=run.cfg.model_dump(mode="json"),
            settings=wandb.Settings(silent=True, console="off", init_timeout=120),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_id(run_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in run_name)[:64]


class _Mlflow:
    """One MLflow run per training run (found again by name on resume), in ``tracking.mlflow_uri``."""

    def __init__(self, run: RunInfo) -> None:
        import mlflow

        tracking = run.cfg.tracking
        uri = tracking.mlflow_uri or (run.run_dir.parent / "mlruns").as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless told otherwise; the default here is a local file store
            # (mlflow-skinny has no SQL store), readable by `mlflow ui --backend-store-uri <uri>`.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(tracking.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(tracking.project)
        name = run.cfg.train.run_name
        found = self.client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{name}'")
        if found:
            self.run_id = found[0].info.run_id
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            for key, value in _flatten(run.cfg.model_dump(mode="json")).items():
                self.client.log_param(self.run_id, key, str(value)[:500])
            self.client.log_text(self.run_id, dump_config(run.cfg), "config.yaml")

    def log(self, metrics: dict[str, float], step: int) -> None:
        import mlflow.entities

        stamp = int(1000 * time.time())
        entries = [mlflow.entities.Metric(k, v, stamp, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class _Tensorboard:
    """Event files in ``run_dir/tensorboard`` (``tensorboard --logdir saves``); a resume purges later steps."""

    def __init__(self, run: RunInfo) -> None:
        from tensorboardX import SummaryWriter

        purge = run.resumed_step + 1 if run.resumed_step else None
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=purge)
        if not run.resumed_step:
            self.writer.add_text("config", "```yaml\n" + dump_config(run.cfg) + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


TRACKERS: dict[str, Callable[[RunInfo], Tracker]] = {"wandb": _Wandb, "mlflow": _Mlflow, "tensorboard": _Tensorboard}


class Trackers:
    """Every configured tracker, fed together."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log(self, metrics: dict[str, Any]) -> None:
        values = _numeric(metrics)
        for tracker in self.trackers:
            tracker.log(values, int(metrics["step"]))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_trackers(cfg: JobConfig, run_dir: str, resumed_step: int) -> Trackers:
    """The trackers of ``tracking.backends`` for this run (none for a run stored at a URI)."""
    if not cfg.tracking.backends:
        return Trackers([])
    if "://" in run_dir:
        print("raytune_ft: tracking needs a local train.storage_path; trackers are off for this run", flush=True)
        return Trackers([])
    run = RunInfo(cfg, Path(run_dir), resumed_step)
    return Trackers([TRACKERS[name](run) for name in cfg.tracking.backends])


def plot_loss(run_dir: str | Path) -> Path | None:
    """``run_dir/loss.png``: training loss (and eval loss when logged) against step, from ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if "://" in str(run_dir) or not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    curves = {key: [(r["step"], r[key]) for r in records if key in r] for key in ("loss", "eval_loss")}
    if not curves["loss"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for key, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, marker="o" if len(points) < 30 else None, label=key)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(f"{Path(run_dir).name}: loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    target = Path(run_dir) / LOSS_PLOT
    figure.savefig(target)
    plt.close(figure)
    return target
