"""Rewards for the online-stage tests, importable by Ray workers (tests/ is on their PYTHONPATH): one a tiny
random model can learn in a few steps (the share of an answer's tokens whose id is even), one that
scores every answer the same (no group is informative), and one that scores the question, not the answer
(its mean over a set of prompts is known before anything is generated)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def even_tokens(completion_ids: Sequence[Sequence[int]], **_: Any) -> list[float]:
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def same_for_all(completion_ids: Sequence[Sequence[int]], **_: Any) -> list[float]:
    return [1.0 for _ in completion_ids]


def answer_value(answer: Sequence[str], **_: Any) -> list[float]:
    return [float(truth) / 100 for truth in answer]
