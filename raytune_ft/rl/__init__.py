"""Online RL (PPO and the GRPO family): rewards, rollout engines and the driver that ties them to the
training workers. Advantage estimators and policy losses live in ``raytune_ft.train.losses``."""

from .rewards import (
    REWARDS,
    RewardError,
    RewardFn,
    final_answer,
    load_reward,
    overlong_penalty,
    score_completions,
    weighted_reward,
)

__all__ = [
    "REWARDS",
    "RewardError",
    "RewardFn",
    "final_answer",
    "load_reward",
    "overlong_penalty",
    "score_completions",
    "weighted_reward",
]
