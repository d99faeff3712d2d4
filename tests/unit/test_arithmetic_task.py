"""The bundled verifiable task: every answer checks out, test rows stay out of training, the generator
rewrites the same files, and the rows read as alpaca rows."""

from __future__ import annotations

import importlib.util
import json
import operator
import re
from fractions import Fraction
from pathlib import Path

from raytune_ft.data import BUILTIN_DATASETS, normalize_row
from raytune_ft.data.builtin import make_arithmetic
from raytune_ft.rl.rewards import exact_match

STEP = re.compile(r"(\d+)(?: [a-z]+)? ([-+x/]) (\d+)(?: [a-z]+)? = (\d+)")
"""One computed step of a worked solution: "7 + 25 = 32", "2 bags x 11 eggs = 22"."""
OPS = {"+": operator.add, "-": operator.sub, "x": operator.mul, "/": operator.truediv}


def rows(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in BUILTIN_DATASETS[name].read_text().splitlines()]


def test_every_worked_solution_computes_its_answer() -> None:
    for row in rows("arithmetic_1k") + rows("arithmetic_test_200"):
        *steps, last = row["output"].splitlines()
        assert last == f"#### {row['answer']}"
        equations = STEP.findall(" ".join(steps))
        assert equations, row
        for a, op, b, result in equations:
            assert OPS[op](Fraction(a), Fraction(b)) == int(result), row
        assert exact_match(completions=[row["output"]], answer=[row["answer"]]) == [1.0]
        numbers = [int(n) for n in re.findall(r"\d+", row["instruction"])]
        assert numbers and all(n > 0 for n in numbers) and int(row["answer"]) > 0


def test_test_rows_never_appear_in_training_and_rows_are_distinct() -> None:
    train = {row["instruction"] for row in rows("arithmetic_1k")}
    test = {row["instruction"] for row in rows("arithmetic_test_200")}
    assert len(train) == 1000 and len(test) == 200
    assert not train & test


def test_the_generator_rewrites_the_same_files(tmp_path: Path) -> None:
    """A copy of the generator, run in a temporary folder, writes files equal to the bundled ones."""
    copy = tmp_path / "make_arithmetic.py"
    copy.write_text(Path(make_arithmetic.__file__).read_text())
    spec = importlib.util.spec_from_file_location("make_arithmetic_copy", copy)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    for name in ("arithmetic_1k", "arithmetic_test_200"):
        assert (tmp_path / f"{name}.jsonl").read_text() == BUILTIN_DATASETS[name].read_text()


def test_rows_read_as_alpaca_prompts_and_answers() -> None:
    row = rows("arithmetic_test_200")[0]
    messages = normalize_row(row, {}, "arithmetic_test_200:1")
    expected = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
    assert messages == expected
