"""Driver of the online stages: the prompts on Ray Data, the rollout engines and weight store as Ray
actors, and the training workers of Ray Train, all in one Ray job.

The engines outlive nothing: they are started before the trainer and killed when it returns, failed or
not. A restarted run resumes from its newest checkpoint like any other, and publishes those weights to
fresh engines before its first generation.
"""

from __future__ import annotations

import math
from typing import Any

from raytune_ft.config import JobConfig
from raytune_ft.models import pin_sources
from raytune_ft.train import (
    RunPlan,
    TrainOutcome,
    absolute_storage,
    build_trainer,
    check_resume_compatible,
    job_tokenizer,
    prepare_job_data,
    start_ray,
    worker_cpus,
)
from raytune_ft.train.launch import resumed_config

from .engine import WeightStore, start_engines
from .loop import plan_rl_steps, rl_loop_per_worker

__all__ = ["run_online", "training_threads"]


def training_threads(cfg: JobConfig, cpus: float) -> int:
    """Compute threads per training worker: its reserved CPUs, or with colocated engines, which reserve none
    and take turns with training, its share of the cluster's CPUs (the prompts' tokenization is light)."""
    import ray

    if cfg.rollout.placement != "colocated" or cfg.scaling.use_gpu:
        return math.ceil(cpus)
    total = float(ray.cluster_resources().get("CPU", 1))
    return max(math.ceil(cpus), math.floor(total / cfg.scaling.num_workers))


def run_online(cfg: JobConfig, address: str | None = None) -> TrainOutcome:
    """Train ``cfg`` (an online stage) on Ray and return where the run and its newest checkpoint are."""
    import ray

    storage = absolute_storage(cfg.train.storage_path)
    run_dir = f"{storage.rstrip('/')}/{cfg.train.run_name}"
    cfg = pin_sources(cfg, resumed=resumed_config(run_dir))
    check_resume_compatible(cfg, run_dir)
    start_ray(address, init=cfg.scaling.ray_init)
    tokenizer = job_tokenizer(cfg)
    cpus = worker_cpus(cfg, float(ray.cluster_resources().get("CPU", 1)))
    job_data = prepare_job_data(cfg, tokenizer, cpus * cfg.scaling.num_workers, share=False)
    total_steps = cfg.train.max_steps or plan_rl_steps(cfg, job_data.rows or 0)
    plan = RunPlan(total_steps=total_steps, run_dir=run_dir, threads=training_threads(cfg, cpus))
    print(
        f"raytune_ft: starting {cfg.rollout.num_engines} rollout engine(s), {cfg.rollout.placement}; "
        f"{cfg.rollout.prompts_per_step} prompts x {cfg.method.group_size} answers per step",
        flush=True,
    )
    store = ray.remote(WeightStore).options(num_cpus=0).remote()  # type: ignore[attr-defined]
    engines: list[Any] = []
    try:
        engines = start_engines(cfg, store)
        feed = {"engines": engines, "store": store}
        trainer = build_trainer(cfg, plan, job_data.datasets, cpus, storage, cfg.train.run_name,
                                loop=rl_loop_per_worker, feed=feed)  # fmt: skip
        result = trainer.fit()
    finally:
        for actor in [*engines, store]:
            ray.kill(actor)
    checkpoint = result.checkpoint.path if result.checkpoint else None
    return TrainOutcome(run_dir=run_dir, checkpoint=checkpoint, total_steps=total_steps)
