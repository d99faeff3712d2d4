"""Normalisation of alpaca and messages rows, placeholders, and errors that name the problem."""

from __future__ import annotations

import pytest

from raytune_ft.data import DataError, normalize_row, resolve_datasets

NAMES = {"name": "Raytune", "author": "the raytune_ft team"}


def test_alpaca_row_becomes_messages() -> None:
    row = {"instruction": "Reverse the word.", "input": "abc", "output": "cba"}
    assert normalize_row(row, NAMES, "t") == [
        {"role": "user", "content": "Reverse the word.\nabc"},
        {"role": "assistant", "content": "cba"},
    ]


def test_alpaca_system_and_history() -> None:
    row = {"instruction": "q2", "input": "", "output": "a2", "system": "sys", "history": [["q1", "a1"]]}
    roles = [m["role"] for m in normalize_row(row, NAMES, "t")]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_placeholders_are_filled() -> None:
    row = {"instruction": "Who are you?", "input": "", "output": "I am {{name}}, made by {{ author }}."}
    assert normalize_row(row, NAMES, "t")[-1]["content"] == "I am Raytune, made by the raytune_ft team."


def test_unknown_placeholder_says_which_config_key_to_set() -> None:
    row = {"instruction": "x", "output": "{{company}}"}
    with pytest.raises(DataError, match=r"file.json row 3: placeholder \{\{company\}\} .* data.placeholders.company"):
        normalize_row(row, NAMES, "file.json row 3")


def test_messages_row_passes_through() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert normalize_row({"messages": messages}, NAMES, "t") == messages


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"text": "no known columns"}, "neither 'messages' nor alpaca"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "expected 'user'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "must end with an assistant message"),
        ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}, "is empty"),
        ({"messages": [{"role": "user", "content": 3}]}, "string 'content'"),
        ({"instruction": ["a"], "output": "x"}, "'instruction' must be a string"),
    ],
)
def test_bad_rows_name_the_problem(row: dict[str, object], problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        normalize_row(row, NAMES, "data.json row 7")


def test_dataset_names_resolve_or_suggest(tmp_path: object) -> None:
    assert [s.name for s in resolve_datasets(["identity", "alpaca_300"])] == ["identity", "alpaca_300"]
    with pytest.raises(DataError, match="Did you mean 'identity'"):
        resolve_datasets(["identiy"])
    with pytest.raises(DataError, match="file not found"):
        resolve_datasets(["/nonexistent/data.jsonl"])
    with pytest.raises(DataError, match="empty"):
        resolve_datasets([])
