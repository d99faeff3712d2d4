"""Regenerate ``arithmetic_1k.jsonl`` and ``arithmetic_test_200.jsonl``, the bundled verifiable task for
online RL: short arithmetic word problems with numeric answers.

The rows are written by us and every answer is computed, one or two operations on small numbers, so a
small instruct model solves some of them and a reward has room to rise. Each row is alpaca-style
(``instruction``, ``output``: a worked solution ending ``#### N``) plus ``answer`` (N), the ground truth
that ``raytune_ft.rl`` rewards compare with. Run ``python -m raytune_ft.data.builtin.make_arithmetic``
to rewrite both files; the seed keeps them stable, and the test rows never appear in the training rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection
from pathlib import Path

__all__ = ["make_rows"]

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo",
          "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara"]  # fmt: skip
_ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "eggs"]
_ASK = " Give the final answer as a number after ####."

Problem = tuple[str, str, int]
"""(question, worked solution, answer)."""


def _add(r: random.Random, name: str, item: str) -> Problem:
    a, b = r.randint(2, 40), r.randint(2, 40)
    question = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
    return question, f"{name} has {a} + {b} = {a + b} {item}.", a + b


def _subtract(r: random.Random, name: str, item: str) -> Problem:
    b = r.randint(2, 30)
    a = b + r.randint(1, 40)
    question = f"{name} has {a} {item} and gives {b} of them away. How many {item} are left?"
    return question, f"{a} - {b} = {a - b} {item} are left.", a - b


def _multiply(r: random.Random, name: str, item: str) -> Problem:
    a, b = r.randint(2, 12), r.randint(2, 12)
    question = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} is that in all?"
    return question, f"{a} bags x {b} {item} = {a * b} {item}.", a * b


def _divide(r: random.Random, name: str, item: str) -> Problem:
    b, each = r.randint(2, 9), r.randint(2, 12)
    question = f"{name} shares {b * each} {item} equally among {b} friends. How many {item} does each friend get?"
    return question, f"{b * each} / {b} = {each} {item} each.", each


def _two_steps(r: random.Random, name: str, item: str) -> Problem:
    a, b, c = r.randint(2, 30), r.randint(2, 6), r.randint(2, 10)
    question = f"{name} has {a} {item}, then buys {b} boxes of {c} {item}. How many {item} does {name} have now?"
    return question, f"{b} x {c} = {b * c} new {item}, and {a} + {b * c} = {a + b * c}.", a + b * c


def _money(r: random.Random, name: str, item: str) -> Problem:
    rate, hours = r.randint(5, 15), r.randint(2, 8)
    spent = r.randint(1, rate * hours - 1)
    question = (
        f"{name} earns {rate} dollars an hour and works {hours} hours, then spends {spent} dollars. "
        "How many dollars are left?"
    )
    worked = f"{rate} x {hours} = {rate * hours} dollars earned, and {rate * hours} - {spent} = {rate * hours - spent}."
    return question, worked, rate * hours - spent


_KINDS: list[Callable[[random.Random, str, str], Problem]] = [_add, _subtract, _multiply, _divide, _two_steps, _money]


def make_rows(count: int, seed: int, exclude: Collection[str] = ()) -> list[dict[str, str]]:
    """``count`` distinct problems (none of whose questions is in ``exclude``), the kinds in turn."""
    r = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen = set(exclude)
    while len(rows) < count:
        kind = _KINDS[len(rows) % len(_KINDS)]
        question, worked, answer = kind(r, r.choice(_NAMES), r.choice(_ITEMS))
        if question in seen:
            continue
        seen.add(question)
        rows.append({"instruction": question + _ASK, "input": "", "output": f"{worked}\n#### {answer}",
                     "answer": str(answer)})  # fmt: skip
    return rows


def main() -> None:
    here = Path(__file__).parent
    test = make_rows(200, seed=2)
    train = make_rows(1000, seed=1, exclude={row["instruction"].removesuffix(_ASK) for row in test})
    for name, rows in (("arithmetic_1k.jsonl", train), ("arithmetic_test_200.jsonl", test)):
        (here / name).write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
