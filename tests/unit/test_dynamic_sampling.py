"""DAPO's dynamic sampling: a step is filled with the informative groups (answers that scored differently)
of the batches generated for it, in the order they came, and its metrics count every answer generated."""

from __future__ import annotations

import numpy as np
import torch

from raytune_ft.rl.engine import Generation
from raytune_ft.rl.loop import _fill_groups, _informative_groups, _Scored


def scored(first_prompt: int, scores: list[float], group: int = 2) -> _Scored:
    """A batch of len(scores) / group prompts, answer i holding the token 100 * prompt + i."""
    prompts = [np.array([first_prompt + p]) for p in range(len(scores) // group)]
    answers = [[100 * (first_prompt + i // group) + i % group] for i in range(len(scores))]
    generation = Generation(
        completions=answers, logprobs=[[-1.0] for _ in answers], truncated=[False] * len(answers), generate_s=2.0,
        sync_s=0.0,
    )  # fmt: skip
    metrics = {"reward": (float(sum(scores)), float(len(scores))), "response_length": (float(len(scores)), 4.0)}
    return _Scored(prompts, generation, torch.tensor(scores), metrics)


def fill(parts: list[_Scored], wanted: int) -> _Scored:
    return _fill_groups(parts, [_informative_groups(part.scores, 2) for part in parts], group=2, wanted=wanted)


def test_informative_groups_are_those_whose_scores_differ() -> None:
    assert _informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2) == [1]


def test_a_step_fills_with_informative_groups_in_the_order_generated() -> None:
    first = scored(0, [1.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # prompt 1 informative
    second = scored(10, [0.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # prompts 10 and 12
    filled = fill([first, second], wanted=3)
    assert [int(p[0]) for p in filled.prompts] == [1, 10, 12]
    assert filled.generation.completions == [[100], [101], [1000], [1001], [1200], [1201]]
    assert filled.scores.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert filled.generation.generate_s == 4.0
    assert filled.metrics["reward"] == (7.0, 12.0), "the reward counts every answer generated"

    short = fill([first, second], wanted=4)
    assert [int(p[0]) for p in short.prompts] == [1, 10, 12], "fewer when the rounds found fewer"
    assert fill([first], wanted=1).generation.completions == [[100], [101]]
    none = fill([scored(0, [1.0, 1.0, 0.0, 0.0])], wanted=2)
    assert [int(p[0]) for p in none.prompts] == [0], "no informative group: the first one, so the worker steps"
