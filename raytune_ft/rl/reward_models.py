"""Reward models as rewards: each ``rm:<path>`` of ``method.reward`` is served by one Ray actor of the run.

The actor loads the checkpoint that ``stage: rm`` wrote (``RewardScorer``) once and scores every worker's
answers; the workers call it through the reward function ``load_reward`` builds from its handle. It is placed
as the rollout engines are (no CPUs of its own when colocated: scoring takes turns with generation and
training), restarted by Ray like them, and stopped with them when the run ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raytune_ft.config import JobConfig
from raytune_ft.models import RewardScorer

from .engine import engine_options, engine_threads, use_threads
from .rewards import REWARD_MODEL_PREFIX

__all__ = ["RewardModelActor", "reserved_cpus", "reward_model_names", "start_reward_models"]


def reward_model_names(cfg: JobConfig) -> list[str]:
    """The ``rm:<path>`` entries of ``method.reward``, each once."""
    return list(dict.fromkeys(name for name in cfg.method.reward if name.startswith(REWARD_MODEL_PREFIX)))


class RewardModelActor:
    """One reward model, scoring answers to rendered prompts with the threads of the node it landed on."""

    def __init__(self, path: str, job: dict[str, Any]) -> None:
        use_threads(engine_threads(JobConfig.model_validate(job)))
        self.scorer = RewardScorer.load(path)

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        return self.scorer.score_answers(prompts, answers)


def reserved_cpus(cfg: JobConfig) -> float:
    """CPUs a run's rollout engines and reward models reserve, each as ``engine_options`` places it (none for
    an offline stage, which starts neither)."""
    if not cfg.method.online:
        return 0.0
    return float(engine_options(cfg)["num_cpus"]) * (cfg.rollout.num_engines + len(reward_model_names(cfg)))


def reward_actor_name(cfg: JobConfig, index: int) -> str:
    """The Ray actor name of a run's reward model (``ray list actors`` shows it)."""
    return f"reward-{cfg.train.run_name}-{index}"


def start_reward_models(cfg: JobConfig) -> dict[str, Any]:
    """A started actor per reward model of ``cfg``, by reward name (waits until each has loaded its model)."""
    import ray

    actor = ray.remote(RewardModelActor)
    options, job = engine_options(cfg), cfg.model_dump(mode="json")
    started = {
        name: actor.options(name=reward_actor_name(cfg, i), **options).remote(  # type: ignore[attr-defined]
            name[len(REWARD_MODEL_PREFIX) :], job
        )
        for i, name in enumerate(reward_model_names(cfg))
    }
    ray.get([handle.score.remote([], []) for handle in started.values()])  # type: ignore[attr-defined]
    return started
