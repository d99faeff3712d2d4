"""Rows of the online stages: the conversation without its last answer, rendered up to the generation
prompt, and the ground truth the rewards check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raytune_ft.data import DataError
from raytune_ft.data.pipeline import EncodeOptions, TokenizeRows
from raytune_ft.data.sources import DatasetSource

OPTIONS = EncodeOptions(cutoff_len=128, stage="prompt")


def encode(tokenizer: Any, rows: list[dict[str, Any]], options: EncodeOptions = OPTIONS, **source: Any) -> dict:
    path = "/data/rows.jsonl"
    sources = [DatasetSource(name="rows", path=path, **source)]
    batch = {
        "path": np.array([path] * len(rows)),
        "row": np.arange(len(rows)),
        "record": np.array([json.dumps(r) for r in rows], dtype=object),
    }
    return TokenizeRows(lambda: tokenizer, options, sources)(batch)


def generation_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_an_answer_column_is_the_ground_truth(tokenizer: Any) -> None:
    out = encode(
        tokenizer, [{"instruction": "What is 2 + 3?", "input": "", "output": "2 + 3 = 5\n#### 5", "answer": "5"}]
    )
    assert out["answer"].tolist() == ["5"]
    assert out["prompt_ids"][0].tolist() == generation_prompt(
        tokenizer, [{"role": "user", "content": "What is 2 + 3?"}]
    )


def test_without_one_the_left_out_answer_is(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"}]
    out = encode(tokenizer, [{"messages": messages}])
    assert out["answer"].tolist() == ["Blue"]
    assert out["prompt_ids"][0].tolist() == generation_prompt(tokenizer, messages[:1])


def test_trl_style_prompt_rows(tokenizer: Any) -> None:
    out = encode(tokenizer, [{"prompt": "What is 7 x 6?", "answer": 42}])
    assert out["answer"].tolist() == ["42"]
    assert out["prompt_ids"][0].tolist() == generation_prompt(
        tokenizer, [{"role": "user", "content": "What is 7 x 6?"}]
    )


def test_a_mapped_answer_column(tokenizer: Any) -> None:
    row = {"instruction": "What is 1 + 1?", "output": "2", "solution": "2"}
    out = encode(tokenizer, [row], formatting="alpaca", columns={"answer": "solution"})
    assert out["answer"].tolist() == ["2"]


def test_a_row_without_ground_truth_names_its_file_and_row(tokenizer: Any) -> None:
    with pytest.raises(DataError, match=r"/data/rows.jsonl: row 0: .*ground truth"):
        encode(tokenizer, [{"prompt": "What is 7 x 6?"}])


def test_prompts_longer_than_cutoff_are_left_out(tokenizer: Any) -> None:
    rows = [{"prompt": "short?", "answer": "1"}, {"prompt": "long " * 200, "answer": "2"}]
    out = encode(tokenizer, rows)
    assert out["answer"].tolist() == ["1"]


def test_the_bundled_task_gives_prompts_and_numbers(tokenizer: Any) -> None:
    from raytune_ft.data import BUILTIN_DATASETS

    lines = Path(BUILTIN_DATASETS["arithmetic_1k"]).read_text().splitlines()[:4]
    out = encode(tokenizer, [json.loads(line) for line in lines])
    assert all(answer.lstrip("-").isdigit() for answer in out["answer"])
    assert all(tokenizer.decode(ids).rstrip().endswith("assistant") for ids in out["prompt_ids"])


def test_preview_shows_the_prompt_and_its_ground_truth() -> None:
    from raytune_ft.data.pipeline import fit_to_cutoff

    ids, labels = [1, 2, 3, 4, 5], [-100, -100, -100, 4, 5]
    assert fit_to_cutoff("prompt", ids, labels, cutoff_len=3) == [(ids, labels)]
    assert fit_to_cutoff("prompt", ids, labels, cutoff_len=2) == []  # the prompt alone is longer
