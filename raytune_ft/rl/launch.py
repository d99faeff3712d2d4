"""Driver side of the online stages: beside the training workers of Ray Train (``run_training``, with the
prompts on Ray Data), the rollout engines and the weight store run as Ray actors of the same job.

The engines outlive nothing: they are started before the trainer and killed when it returns, failed or
not; a sweep trial starts its own. A restarted run resumes from its newest checkpoint like any other, and
publishes those weights to fresh engines before its first generation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from raytune_ft.config import ConfigError, JobConfig
from raytune_ft.models import adapter_folder
from raytune_ft.train import OFFLINE, TrainOutcome, WorkerSetup, run_training

from .engine import LoraWeights, WeightStore, colocated_share, start_engines
from .judge import check_judge
from .loop import rl_loop_per_worker
from .reward_models import reserved_cpus, start_reward_models
from .rewards import load_reward

__all__ = [
    "ONLINE",
    "check_online",
    "check_rewards",
    "rollout_actors",
    "run_online",
    "training_threads",
    "worker_setup",
]


def training_threads(cfg: JobConfig, cpus: float, share: float) -> int:
    """Compute threads per training worker: its reserved CPUs (the rollout engines run while it trains, so it
    does not take its ``share`` of the node), or with colocated engines, which reserve none, its share of the
    cluster's CPUs (the prompts' tokenization is light) as ``colocated_share`` splits them."""
    import ray

    if cfg.rollout.placement != "colocated" or cfg.scaling.use_gpu:
        return math.ceil(cpus)
    total = colocated_share(cfg, float(ray.cluster_resources().get("CPU", 1)))
    return max(math.ceil(cpus), math.floor(total / cfg.scaling.num_workers))


def run_online(cfg: JobConfig, address: str | None = None) -> TrainOutcome:
    """Train ``cfg`` (an online stage) on Ray and return where the run and its newest checkpoint are."""
    return run_training(cfg, address, setup=ONLINE)


def worker_setup(cfg: JobConfig) -> WorkerSetup:
    """The workers ``cfg``'s stage runs: online stages generate their own answers."""
    return ONLINE if cfg.method.online else OFFLINE


def check_rewards(cfg: JobConfig) -> None:
    """Load every reward once on the driver, so a wrong name, import path or reward-model path fails before
    engines start (the workers load them again; a function by import path must be importable there too)."""
    for name in cfg.method.reward:
        if name == "judge":  # reached once: it answers, takes the key and serves the model
            check_judge(cfg.method.judge)
        else:
            load_reward(name, cfg.method.max_new_tokens)


def check_online(cfg: JobConfig) -> None:
    """What the engines would refuse only once started: every reward (``check_rewards``), and ``adapter.init_from``
    adapters they cannot merge (``modules_to_save``, LoRA on embeddings)."""
    check_rewards(cfg)
    for entry in cfg.adapter.init_from:
        try:
            LoraWeights.check_folder(adapter_folder(entry, cfg.model.cache_dir))
        except ValueError as err:
            raise ConfigError(
                f"adapter.init_from {entry}: {err}; merge it into a model with raytune-ft export"
            ) from None


@contextmanager
def rollout_actors(cfg: JobConfig) -> Iterator[dict[str, Any]]:
    """The run's weight store, rollout engines and reward models, as the ``feed`` its training workers take;
    killed on exit, failed or not."""
    import ray

    print(
        f"raytune_ft: starting {cfg.rollout.num_engines} rollout engine(s), {cfg.rollout.placement}; "
        f"{cfg.rollout.prompts_per_step} prompts x {cfg.method.group_size} answers per step",
        flush=True,
    )
    store = ray.remote(WeightStore).options(num_cpus=0).remote()  # type: ignore[attr-defined]
    engines: list[Any] = []
    judges: dict[str, Any] = {}
    try:
        judges = start_reward_models(cfg)
        engines = start_engines(cfg, store)
        yield {"engines": engines, "store": store, "reward_models": judges}
    finally:
        for actor in [*engines, *judges.values(), store]:
            ray.kill(actor)


ONLINE = WorkerSetup(
    loop=rl_loop_per_worker, actors=rollout_actors, threads=training_threads, check=check_online,
    reserved_cpus=reserved_cpus,
)  # fmt: skip
