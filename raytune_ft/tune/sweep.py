"""Driver of ``raytune-ft tune``: tokenize once, run a Ray Tune sweep of TorchTrainer runs, report.

The sweep lives in ``train.storage_path/train.run_name``: Ray Tune's experiment state, each
trial's training run under ``trials/``, and the results files. Running the same command again
continues an interrupted sweep (``Tuner.restore``) and, for a finished one, prints its results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from raytune_ft.config import ConfigError, JobConfig, dump_config, load_config
from raytune_ft.models import pin_sources
from raytune_ft.rl.launch import worker_setup
from raytune_ft.rl.loop import ONLINE_EVAL
from raytune_ft.train import absolute_storage, job_tokenizer, prepare_job_data, start_ray

from .results import SweepFiles, TrialRow, best_trial, stopped_early, trial_rows, write_results
from .space import SCHEDULERS, expected_trials, num_samples, search_space, sweep_base
from .trial import run_trial

__all__ = ["SweepOutcome", "SweepPlan", "SweepProgress", "check_sweep", "plan_sweep", "run_sweep"]

SWEEP_FILE = "sweep.yaml"
"""The config a sweep was started with, kept in its folder to refuse continuing it under another."""

_DRIVER_CPU = 0.01
"""What a trial's own process reserves: it only waits on its training run (Tune refuses 0)."""


@dataclass(frozen=True)
class SweepPlan:
    """How the cluster is shared: trials at once, and CPUs per training worker of each."""

    concurrency: int
    cpus_per_worker: float


@dataclass(frozen=True)
class SweepOutcome:
    sweep_dir: str
    rows: list[TrialRow]
    best: TrialRow | None
    files: SweepFiles
    unstarted: int
    """Trials of the space not started yet (an interrupted sweep)."""

    @property
    def interrupted(self) -> bool:
        """Whether trials remain to run: the same command continues the sweep."""
        return self.unstarted > 0 or any(row.status == "unfinished" for row in self.rows)


def plan_sweep(cfg: JobConfig, cluster_cpus: float, cluster_gpus: float = 0.0) -> SweepPlan:
    """Trials at once: ``tune.max_concurrent_trials``, else as many as the cluster holds when each
    trial's workers take ``cpus_per_worker`` (default 1 CPU, shrunk to fit one trial on a small machine)."""
    scaling = cfg.tune.scaling or cfg.scaling
    workers = scaling.num_workers
    wanted = scaling.cpus_per_worker or 1.0
    engines = worker_setup(cfg).reserved_cpus(cfg)  # a trial's own rollout engines and reward models
    fits = int(cluster_gpus // workers) if scaling.use_gpu else int(cluster_cpus // (wanted * workers + engines))
    concurrency = cfg.tune.max_concurrent_trials or max(1, fits)
    if scaling.cpus_per_worker is not None:
        return SweepPlan(concurrency, scaling.cpus_per_worker)
    share = (cluster_cpus - (_DRIVER_CPU + engines) * concurrency) / (concurrency * workers)
    return SweepPlan(concurrency, max(0.1, min(1.0, math.floor(share * 100) / 100)))


def check_sweep(cfg: JobConfig) -> None:
    """Refuse a sweep that cannot rank its trials before starting anything."""
    if not cfg.tune.space:
        raise ConfigError(
            "tune.space is empty: give the keys to sweep, e.g. tune.space: {train.learning_rate: "
            "{loguniform: [1.0e-5, 1.0e-3]}}"
        )
    worker_setup(cfg).check(cfg)
    if cfg.method.online and cfg.tune.metric.startswith("eval_") and not cfg.tune.metric.startswith(ONLINE_EVAL):
        raise ConfigError(
            f"tune.metric {cfg.tune.metric}: method.stage {cfg.method.stage} measures its validation split by reward, "
            "not loss; rank its trials by eval_reward (with data.val_size or data.eval_dataset) or by the mean reward "
            "of their answers (tune.metric: reward), with tune.mode: max"
        )
    if "://" in cfg.train.storage_path:
        raise ConfigError(
            f"train.storage_path {cfg.train.storage_path}: a sweep keeps its folder on a filesystem path (local, or a "
            "mount every node shares such as NFS); storage URIs (s3://, gs://) work for train but not yet for tune"
        )
    if cfg.tune.metric.startswith("eval_") and not (cfg.data.val_size or cfg.data.eval_dataset):
        raise ConfigError(
            f"tune.metric {cfg.tune.metric} is measured on a validation split, and this config has none: set "
            "data.val_size (e.g. 0.1) or data.eval_dataset, or rank trials by the training loss (tune.metric: loss)"
        )


def run_sweep(cfg: JobConfig, address: str | None = None) -> SweepOutcome:
    """Run (or continue) the sweep ``cfg.tune`` describes and write its results."""
    import ray
    from ray import tune

    check_sweep(cfg)
    cfg = pin_sources(cfg)  # every trial trains the same Hub commit and init_from adapters
    storage = absolute_storage(cfg.train.storage_path)
    sweep_dir = Path(storage) / cfg.train.run_name
    restoring = _check_same_sweep(cfg, sweep_dir)
    start_ray(address, init=cfg.scaling.ray_init)
    base = sweep_base(cfg)
    tokenizer = job_tokenizer(base)
    resources = ray.cluster_resources()
    plan = plan_sweep(cfg, float(resources.get("CPU", 1)), float(resources.get("GPU", 0)))
    print(f"raytune_ft: tokenizing once for every trial of sweep {cfg.train.run_name} ...", flush=True)
    job_data = prepare_job_data(base, tokenizer, 0.0, share=True)
    total_steps = job_data.total_steps(base)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=base.model_dump(mode="json"), datasets=job_data.datasets, rows=job_data.rows,
            cpus=plan.cpus_per_worker, trials_dir=str(sweep_dir / "trials"), metric=cfg.tune.metric,
        ),
        {"CPU": _DRIVER_CPU},
    )  # fmt: skip
    print(
        f"raytune_ft: sweep {cfg.train.run_name}: {cfg.tune.scheduler} over {', '.join(cfg.tune.space)}; "
        f"{plan.concurrency} trial(s) at a time, {base.scaling.num_workers} worker(s) x "
        f"{plan.cpus_per_worker:g} CPU each; {total_steps} steps per trial; in {sweep_dir}",
        flush=True,
    )
    if restoring:
        print(f"raytune_ft: continuing the sweep in {sweep_dir}", flush=True)
        tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _new_tuner(cfg, trainable, plan, storage, total_steps)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(dump_config(cfg), encoding="utf-8")
    grid = tuner.fit()
    saved = {trial.trial_id: trial.status for trial in tune.ExperimentAnalysis(str(sweep_dir)).trials}
    rows = trial_rows(grid, cfg.tune.metric, saved)
    best = best_trial(rows, cfg.tune.mode)
    files = write_results(sweep_dir, rows, best, base, f"{cfg.train.run_name}-best", cfg.tune.metric)
    unstarted = max(0, expected_trials(cfg.tune) - len(rows))
    return SweepOutcome(sweep_dir=str(sweep_dir), rows=rows, best=best, files=files, unstarted=unstarted)


def _new_tuner(cfg: JobConfig, trainable: Any, plan: SweepPlan, storage: str, total_steps: int) -> Any:
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space=search_space(cfg.tune),
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric,
            mode=cfg.tune.mode,
            scheduler=SCHEDULERS[cfg.tune.scheduler](cfg, total_steps),
            num_samples=num_samples(cfg.tune),
            max_concurrent_trials=plan.concurrency,
        ),
        run_config=tune.RunConfig(
            name=cfg.train.run_name,
            storage_path=storage,
            # Tune's checkpoints are pointer files; keep them all, PBT may clone any trial's newest in flight.
            verbose=0,  # Tune's per-result tables drown the workers' progress; SweepProgress prints a line instead
            callbacks=[SweepProgress(cfg.tune.metric, cfg.tune.scheduler)],
        ),
    )


class SweepProgress(Callback):
    """One line per trial event: each result carrying ``metric``, and how each trial ended
    (completed, stopped early by ``scheduler``, failed)."""

    def __init__(self, metric: str, scheduler: str) -> None:
        self.metric = metric
        self.scheduler = scheduler

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if self.metric in result:
            print(f"raytune_ft: trial {trial.trial_id} {_draw(trial)} step {result.get('step')}/"
                  f"{result.get('total_steps')}: {self.metric} {result[self.metric]:.4f}", flush=True)  # fmt: skip

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        early = f"stopped early by {self.scheduler} at step {last.get('step')}/{last.get('total_steps')}"
        ended = early if stopped_early(last) else "completed"
        print(f"raytune_ft: trial {trial.trial_id} {_draw(trial)} {ended}", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        print(f"raytune_ft: trial {trial.trial_id} {_draw(trial)} failed; see {trial.path}", flush=True)


def _draw(trial: Any) -> str:
    return "(" + ", ".join(f"{key}={value}" for key, value in trial.config.items()) + ")"


def _check_same_sweep(cfg: JobConfig, sweep_dir: Path) -> bool:
    """Whether ``sweep_dir`` holds this sweep to continue; refuse one started with another config."""
    from ray import tune

    saved = sweep_dir / SWEEP_FILE
    if not saved.is_file():
        if sweep_dir.exists() and any(sweep_dir.iterdir()):
            raise ConfigError(
                f"{sweep_dir} already exists and is not a raytune-ft sweep; choose another train.run_name"
            )
        return False
    if load_config(saved) != cfg:
        raise ConfigError(
            f"sweep {cfg.train.run_name!r} in {sweep_dir} was started with another config ({saved}); continuing "
            "it under this one would mix two sweeps: choose a new train.run_name, or restore that config"
        )
    return tune.Tuner.can_restore(str(sweep_dir))
