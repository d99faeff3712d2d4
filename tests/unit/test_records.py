"""Numbered raw records: row numbers as people count them, stable hash splits, mixing rates, and
errors that name the file and row."""

from __future__ import annotations

import io
import json
import statistics
from typing import Any

import pytest

from raytune_ft.data import IGNORE_INDEX, DataError, DatasetSource, EncodeOptions, RecordSelection, encode_rows
from raytune_ft.data.pipeline import mixing_rates
from raytune_ft.data.records import _csv_rows, _json_rows, _jsonl_rows, copies


def test_jsonl_rows_are_line_numbers_and_blank_lines_are_skipped() -> None:
    data = b'{"a": 1}\n\n{"a": 2}\r\n'
    assert list(_jsonl_rows(io.BytesIO(data), "f.jsonl")) == [(1, '{"a": 1}'), (3, '{"a": 2}')]


def test_json_array_rows_and_a_broken_array_names_the_line() -> None:
    assert [n for n, _ in _json_rows(io.BytesIO(b'[{"a": 1}, {"a": 2}]'), "f.json")] == [1, 2]
    with pytest.raises(DataError, match=r"f.json: not valid JSON at line 2, column 1"):
        list(_json_rows(io.BytesIO(b'[{"a": 1},\n'), "f.json"))


def test_csv_rows_count_data_rows(tmp_path: object) -> None:
    import pyarrow as pa

    rows = list(_csv_rows(pa.BufferReader(b"instruction,output\nq1,a1\nq2,a2\n"), "f.csv"))
    assert rows == [(1, '{"instruction": "q1", "output": "a1"}'), (2, '{"instruction": "q2", "output": "a2"}')]


def test_validation_split_is_stable_disjoint_and_the_right_size() -> None:
    rows = range(1, 5001)
    train = RecordSelection("train", val_fraction=0.2, seed=3)
    evaluation = RecordSelection("eval", val_fraction=0.2, seed=3)
    in_train = {r for r in rows if copies(train, "f", r)}
    in_eval = {r for r in rows if copies(evaluation, "f", r)}
    assert in_train.isdisjoint(in_eval) and len(in_train | in_eval) == 5000
    assert 900 < len(in_eval) < 1100
    assert in_eval == {r for r in rows if copies(evaluation, "f", r)}, "the same seed gives the same split"
    assert in_eval != {r for r in rows if copies(RecordSelection("eval", 0.2, seed=4), "f", r)}


def test_rates_subsample_and_repeat_rows() -> None:
    assert statistics.mean(copies(RecordSelection(rate=2.5), "f", r) for r in range(4000)) == pytest.approx(2.5, 0.05)
    assert statistics.mean(copies(RecordSelection(rate=0.25), "f", r) for r in range(4000)) == pytest.approx(0.25, 0.1)
    assert [copies(RecordSelection(max_rows=2), "f", r) for r in (1, 2, 3)] == [1, 1, 0]


def test_mixing_rates_follow_the_probabilities() -> None:
    # 100 and 20 rows at 50/50: "under" stops with the small set (20 + 20), "over" with the large (100 + 100).
    assert mixing_rates([100, 20], [0.5, 0.5], "interleave_under") == pytest.approx([0.2, 1.0])
    assert mixing_rates([100, 20], [0.5, 0.5], "interleave_over") == pytest.approx([1.0, 5.0])
    assert mixing_rates([100, 100], [3, 1], "interleave_under") == pytest.approx([1.0, 1 / 3])


def test_encode_rows_names_file_and_row_of_each_problem(tokenizer: object) -> None:
    rows = [
        ("d.jsonl", 1, '{"instruction": "hi", "output": "yo"}'),
        ("d.jsonl", 2, '{"instruction": "hi", "output": '),
        ("d.jsonl", 3, "[1, 2]"),
        ("d.jsonl", 4, '{"instruction": "hi", "output": 5}'),
    ]
    results = encode_rows(tokenizer, EncodeOptions(cutoff_len=64), [], rows)
    assert results[0].problem == "" and results[0].input_ids
    assert results[1].problem.startswith("d.jsonl: row 2: not valid JSON")
    assert results[2].problem == "d.jsonl: row 3: expected a JSON object, got list"
    assert results[3].problem == "d.jsonl: row 4: column 'output' must be a string, got int"


def test_pretraining_rows_learn_every_token_and_long_documents_are_split(tokenizer: Any) -> None:
    from raytune_ft.data.pipeline import fit_to_cutoff

    text = " ".join(f"word{i}" for i in range(60))
    [result] = encode_rows(
        tokenizer, EncodeOptions(cutoff_len=32, stage="pt"), [], [("c.jsonl", 1, json.dumps({"text": text}))]
    )
    assert result.input_ids == result.labels, "pre-training learns every token"
    assert result.input_ids is not None and result.input_ids[-1] == tokenizer.eos_token_id
    pieces = fit_to_cutoff("pt", result.input_ids, result.labels or [], 32)
    assert [len(ids) for ids, _ in pieces[:-1]] == [32] * (len(pieces) - 1) and len(pieces) > 2
    assert [t for ids, _ in pieces for t in ids] == result.input_ids, "no token is lost when splitting"
    assert fit_to_cutoff("sft", result.input_ids, result.labels or [], 32) == [(result.input_ids[:32],) * 2]


def learned_spans(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    spans: list[list[int]] = []
    for i, (token, label) in enumerate(zip(ids, labels, strict=True)):
        assert label in (IGNORE_INDEX, token), f"token {i}: a label is either masked or the token itself"
        if label != IGNORE_INDEX:
            if i == 0 or labels[i - 1] == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(token)
    return [tokenizer.decode(span) for span in spans]


@pytest.mark.parametrize(("mask_history", "expected"), [(False, ["Paris", "Rome"]), (True, ["Rome"])])
def test_sharegpt_custom_tags_multi_turn_masking_token_by_token(
    tokenizer: Any, mask_history: bool, expected: list[str]
) -> None:
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}
    source = DatasetSource("chat", "/data/chat.json", "sharegpt", {"messages": "dialog"}, tags)
    turns = [("me", "Capital of France?"), ("bot", "Paris"), ("me", "And Italy?"), ("bot", "Rome")]
    record = json.dumps({"dialog": [{"speaker": s, "text": t} for s, t in turns], "system": "Be brief."})
    options = EncodeOptions(cutoff_len=256, mask_history=mask_history)
    [result] = encode_rows(tokenizer, options, [source], [("/data/chat.json", 7, record)])
    assert not result.problem and result.input_ids and result.labels
    spans = learned_spans(tokenizer, result.input_ids, result.labels)
    assert spans == [f"{answer}<|im_end|>\n" for answer in expected]
    assert tokenizer.decode(result.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
