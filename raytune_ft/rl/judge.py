"""An LLM judge as a reward: any OpenAI-compatible endpoint (``raytune-ft serve``, vLLM, a hosted API) grades
each answer, and the grade in its reply (``parse_grade``: its last fraction, else its last number over
``method.judge.max_score``) is the reward.

The training workers call the endpoint, ``method.judge.concurrency`` requests at a time, through the
``openai`` client. A request that still fails after the client's retries leaves its answer not judged
(None: the other rewards still count); a refused key or an unknown model stops the run, and the driver
checks both before anything starts (``check_judge``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raytune_ft.config import JudgeConfig

from .rewards import RewardError, RewardFn

__all__ = ["check_judge", "judge_reward", "parse_grade"]

_NUMBER = r"-?\d+(?:\.\d+)?"
_FRACTION = re.compile(rf"({_NUMBER})\s*(?:/|out of)\s*({_NUMBER})")
_ANY_NUMBER = re.compile(_NUMBER)


def parse_grade(reply: str, max_score: float) -> float | None:
    """The grade in ``reply``, clamped to 0..1: its last fraction ("7/10", "4 out of 5") on that fraction's
    own scale, else its last number over ``max_score`` (so "from 0 to 10, I'd say 7" is 0.7); None when
    the reply holds no number."""
    if fractions := _FRACTION.findall(reply):
        points, scale = (float(x) for x in fractions[-1])
        grade = points / scale if scale > 0 else 0.0
    elif numbers := _ANY_NUMBER.findall(reply):
        grade = float(numbers[-1]) / max_score
    else:
        return None
    return min(max(grade, 0.0), 1.0)


def _client(cfg: JudgeConfig) -> Any:
    import openai

    key = os.environ.get(cfg.api_key_env) or "EMPTY"  # an endpoint without a key takes any
    return openai.OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s, max_retries=2)


def _refusal(cfg: JudgeConfig, error: Exception) -> RewardError | None:
    """The error that stops the run, for a judge that refused the key or does not know the model."""
    import openai

    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return RewardError(
            f"judge {cfg.base_url}: the endpoint refused the key in ${cfg.api_key_env} ({error.status_code}); set "
            "method.judge.api_key_env to the variable that holds its key"
        )
    if isinstance(error, openai.NotFoundError):
        return RewardError(f"judge {cfg.base_url}: no model {cfg.model!r} there (404); set method.judge.model")
    return None


def check_judge(cfg: JudgeConfig) -> None:
    """Reach the endpoint once: it answers, takes the key and lists ``cfg.model``."""
    import openai

    try:
        served = [model.id for model in _client(cfg).models.list()]
    except openai.APIError as error:
        refusal = _refusal(cfg, error)
        raise refusal or RewardError(f"judge {cfg.base_url}: cannot reach it ({error})") from error
    if cfg.model not in served:
        raise RewardError(f"judge {cfg.base_url}: no model {cfg.model!r} there; it serves {', '.join(served)}")


def judge_reward(cfg: JudgeConfig) -> RewardFn:
    """The ``judge`` reward: one request per answer, with the prompt, the answer and the row's ground truth."""
    client = _client(cfg)

    def grade(question: str, answer: str, reference: str) -> float | None:
        import openai

        content = cfg.prompt.format(question=question, answer=answer, reference=reference)
        try:
            reply = client.chat.completions.create(
                model=cfg.model, messages=[{"role": "user", "content": content}], max_tokens=cfg.max_tokens,
                temperature=0.0,
            )  # fmt: skip
        except openai.APIError as error:
            if (refusal := _refusal(cfg, error)) is not None:
                raise refusal from error
            return None
        return parse_grade(reply.choices[0].message.content or "", cfg.max_score)

    def judge(
        prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str] | None = None, **_: Any
    ) -> list[float | None]:
        references = answer if answer is not None else [""] * len(completions)
        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            return list(pool.map(grade, prompts, completions, references))

    return judge
