"""Rule-based rewards for online RL, called the way TRL calls its reward functions, so one written for
TRL works here as it is.

A reward function takes keyword arguments: ``prompts`` and ``completions`` (lists of strings, one per
completion), ``completion_lengths`` (tokens each completion holds) and every column of the prompt rows,
repeated per completion (``answer`` for the ground truth). It returns one float per completion, or None
where it cannot judge (a judge that failed). ``weighted_reward`` adds several with weights, skipping the
None ones, as TRL does.

Built in, by name (``REWARDS``): ``exact_match`` (the completion's final answer against ``answer``,
numbers compared as numbers), ``math_verify`` (the same answer compared as mathematics by
``math-verify``), ``answer_format`` (the completion ends with a marked final answer) and
``overlong`` (DAPO's soft penalty near the generation limit) and ``judge`` (an LLM behind an
OpenAI-compatible endpoint grades, ``raytune_ft.rl.judge``). Any other is named by import path,
``package.module:function``. ``rm:<path>`` names a reward model (``stage: rm``) that the run serves from a
Ray actor (``raytune_ft.rl.reward_models``).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from raytune_ft.config import InputError, JudgeConfig
from raytune_ft.config.template_names import did_you_mean

__all__ = [
    "REWARDS",
    "REWARD_MODEL_PREFIX",
    "RewardError",
    "RewardFn",
    "answer_format",
    "exact_match",
    "final_answer",
    "load_reward",
    "math_verify",
    "overlong_penalty",
    "weighted_reward",
]

RewardFn = Callable[..., Sequence[float | None]]


class RewardError(InputError):
    """A reward that cannot be loaded or that answered out of shape."""


_MARKED = re.compile(r"####\s*([^\n]+)")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def final_answer(text: str) -> str | None:
    """The answer a completion commits to: the text after its last ``####`` (GSM8K's marker), else the
    inside of its last ``\\boxed{...}``, else its last number; None when it holds none of them."""
    for pattern in (_MARKED, _BOXED):
        found = pattern.findall(text)
        if found:
            return str(found[-1]).strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> Fraction | None:
    """``text`` as an exact number ("1,000", "$12.50", "3/4", "-0.5", "7." and a trailing unit word
    such as "12 apples" count), else None."""
    found = _NUMBER.search(text.strip())
    if found is None or found.start() > 1:
        return None
    token = found.group(0).replace(",", "").replace("$", "")
    try:
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def _same_answer(given: str | None, expected: object) -> bool:
    if given is None:
        return False
    a, b = _as_number(given), _as_number(str(expected))
    if a is not None and b is not None:
        return a == b
    return " ".join(given.lower().split()).rstrip(".") == " ".join(str(expected).lower().split()).rstrip(".")


def exact_match(completions: Sequence[str], answer: Sequence[object], **_: Any) -> list[float]:
    """1 where the completion's ``final_answer`` equals the row's ``answer``, else 0. Numbers compare as
    numbers (1,000 = 1000.0, 3/4 = 0.75); other answers compare case- and space-insensitively."""
    return [float(_same_answer(final_answer(text), truth)) for text, truth in zip(completions, answer, strict=True)]


def math_verify(completions: Sequence[str], answer: Sequence[object], **_: Any) -> list[float]:
    """1 where the completion's ``final_answer`` equals the row's ``answer`` as mathematics, by the
    ``math-verify`` package (Hugging Face's grader: LaTeX, fractions, radicals, sets and expressions compared
    symbolically, so ``\\frac{1}{2}`` = 0.5 and ``2\\sqrt{2}`` = ``\\sqrt{8}``), else 0."""
    import logging

    try:
        from math_verify import parse, verify
    except ImportError as err:
        raise RewardError(f"reward 'math_verify' needs the math-verify package: pip install it ({err})") from None
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call that runs without timeout

    def read(text: str) -> list[Any]:
        # No timeouts: math-verify's use signal.alarm, which works in a main thread only (a Ray Train worker's
        # loop runs in another).
        return list(parse(f"\\boxed{{{text}}}", parsing_timeout=None))  # type: ignore[arg-type]

    scores = []
    for text, truth in zip(completions, answer, strict=True):  # the grader's answer, then math-verify's comparison
        found = final_answer(text)
        gold, guess = read(str(truth)), read(found) if found is not None else []
        scores.append(float(bool(gold and guess and verify(gold, guess, timeout_seconds=None))))
    return scores


def answer_format(completions: Sequence[str], **_: Any) -> list[float]:
    """1 where the completion marks its final answer (``#### 42`` or ``\\boxed{42}``) as its last line,
    else 0: a shaping reward that teaches the model where graders look."""
    scores = []
    for text in completions:
        last = text.strip().splitlines()[-1] if text.strip() else ""
        scores.append(float(bool(_MARKED.search(last) or _BOXED.search(last))))
    return scores


def overlong_penalty(max_length: int, buffer: int) -> RewardFn:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, sec. 3.4): 0 up to
    L_max - L_cache tokens, then falling linearly to -1 at ``max_length`` (L_max) over the last
    ``buffer`` (L_cache) tokens, and -1 beyond: ((L_max - L_cache) - |y|) / L_cache in between."""
    if not 0 < buffer <= max_length:
        raise RewardError(f"overlong: buffer {buffer} must be in 1..max_length ({max_length})")

    def overlong(completion_lengths: Sequence[int], **_: Any) -> list[float]:
        start = max_length - buffer
        return [0.0 if n <= start else max(-1.0, (start - n) / buffer) for n in completion_lengths]

    return overlong


REWARDS: dict[str, RewardFn] = {"exact_match": exact_match, "math_verify": math_verify, "answer_format": answer_format}
"""Built-in rewards by name. ``overlong`` is built by ``load_reward`` from the generation limit."""


REWARD_MODEL_PREFIX = "rm:"
"""``rm:<path>``: a reward model's checkpoint or run directory, scored by an actor (``reward_models``)."""


def load_reward(
    name: str,
    max_new_tokens: int | None = None,
    actors: Mapping[str, Any] | None = None,
    judge: JudgeConfig | None = None,
) -> RewardFn:
    """A built-in reward by name, ``overlong`` (a quarter of ``max_new_tokens`` as its buffer), ``judge``
    (the LLM ``judge`` grades), any function by import path ``package.module:function``, or a reward model
    ``rm:<path>`` served by its actor in ``actors`` (reward name -> actor handle). Without ``actors``, a
    reward model's path is only checked (it must hold a checkpoint of ``stage: rm``) and its reward cannot
    be called."""
    if name.startswith(REWARD_MODEL_PREFIX):
        if actors is None:
            return _unserved_reward(name)
        if name not in actors:
            raise RewardError(f"reward {name!r}: a reward model is scored by the actor its run starts; none was given")
        return _served_reward(actors[name])
    if name == "judge":
        if judge is None or not judge.base_url:
            raise RewardError("reward 'judge' needs method.judge.base_url (an OpenAI-compatible endpoint)")
        from .judge import judge_reward

        return judge_reward(judge)
    if name == "overlong":
        if max_new_tokens is None:
            raise RewardError("reward 'overlong' needs the generation limit (max_new_tokens)")
        return overlong_penalty(max_new_tokens, max(1, max_new_tokens // 4))
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        names = [*REWARDS, "overlong", "judge"]
        raise RewardError(
            f"unknown reward {name!r}{did_you_mean(name, names)}: use one of {', '.join(names)}, "
            "or a function by import path, package.module:function"
        )
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise RewardError(f"reward {name!r}: cannot import it ({error})") from error
    if not callable(fn):
        raise RewardError(f"reward {name!r} is not a function")
    return fn  # type: ignore[no-any-return]


def _unserved_reward(name: str) -> RewardFn:
    from raytune_ft.models import reward_model_checkpoint

    reward_model_checkpoint(name[len(REWARD_MODEL_PREFIX) :])

    def unserved(**_: Any) -> list[float | None]:
        raise RewardError(f"reward {name!r}: a reward model is scored by the actor its run starts; none was given")

    return unserved


def _served_reward(actor: Any) -> RewardFn:
    def reward_model(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
        import ray

        return list(ray.get(actor.score.remote(list(prompts), list(completions))))

    return reward_model


def score_completions(
    rewards: Mapping[str, tuple[RewardFn, float]], **kwargs: Any
) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """Every reward's scores of ``kwargs["completions"]`` (TRL's calling convention) and their weighted sum,
    sum_k w_k r_k per completion over the rewards that judged it (None, or NaN, counts as absent, as TRL's
    nansum); None where none did. Each reward must answer one value per completion."""
    count = len(kwargs["completions"])
    totals: list[float | None] = [None] * count
    each: dict[str, list[float | None]] = {}
    for name, (fn, weight) in rewards.items():
        scores = list(fn(**kwargs))
        if len(scores) != count:
            raise RewardError(f"reward {name!r} gave {len(scores)} scores for {count} completions")
        each[name] = [None if s is None or (isinstance(s, float) and math.isnan(s)) else float(s) for s in scores]
        for i, score in enumerate(each[name]):
            if score is not None:
                totals[i] = (totals[i] or 0.0) + weight * score
    return totals, each


def weighted_reward(rewards: Mapping[str, tuple[RewardFn, float]]) -> Callable[..., list[float | None]]:
    """One reward function from several (``score_completions``' weighted sum)."""

    def combined(**kwargs: Any) -> list[float | None]:
        return score_completions(rewards, **kwargs)[0]

    return combined
