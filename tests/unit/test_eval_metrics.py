"""BLEU-4 / ROUGE against hand-computed values, and the multiple-choice file reader's checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from raytune_ft.data import DataError
from raytune_ft.evaluate import bleu4, generation_scores, read_choice_file, rouge_l, rouge_n, words


def test_words_split_latin_words_and_cjk_characters() -> None:
    assert words("Hello, World! It's 42.") == ["hello", "world", "it", "s", "42"]
    assert words("我是Ray助手") == ["我", "是", "ray", "助", "手"]


def test_bleu4_identical_is_100_and_disjoint_is_near_0() -> None:
    sentence = words("the cat sat on the mat today")
    assert bleu4(sentence, sentence) == pytest.approx(100.0)
    # No match at any order: smoothing 3 gives 1/(2*5), 1/(4*4), 1/(8*3), 1/(16*2).
    nothing = 100 * math.exp((math.log(1 / 10) + math.log(1 / 16) + math.log(1 / 24) + math.log(1 / 32)) / 4)
    assert bleu4(words("a b c d e"), words("v w x y z")) == pytest.approx(nothing)
    assert bleu4([], sentence) == 0.0


def test_bleu4_by_hand() -> None:
    hyp, ref = words("the cat sat on the mat"), words("the cat is on the mat")
    # p1 = 5/6, p2 = 3/5 (the cat, on the, the mat), p3 = 1/4 (on the mat), p4: none of 3 -> 1/(2*3) (smoothing 3)
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)
    assert bleu4(hyp, ref) == pytest.approx(expected)
    # A short hypothesis pays the brevity penalty exp(1 - r/c).
    short = words("the cat")
    assert bleu4(short, ref) < bleu4(hyp, ref)


def test_rouge_by_hand() -> None:
    hyp, ref = words("the cat sat on the mat"), words("the cat is on the mat")
    assert rouge_n(hyp, ref, 1) == pytest.approx(100 * 5 / 6)  # P = R = 5/6
    assert rouge_n(hyp, ref, 2) == pytest.approx(100 * 3 / 5)
    assert rouge_l(hyp, ref) == pytest.approx(100 * 5 / 6)  # LCS: the cat on the mat
    assert rouge_l(words("a b c"), words("c b a")) == pytest.approx(100 / 3)
    assert rouge_n([], ref, 1) == 0.0


def test_generation_scores_average_over_pairs() -> None:
    scores = generation_scores(["the cat", "xyz"], ["the cat", "abc"])
    assert scores["rouge-1"] == pytest.approx(50.0) and set(scores) == {"bleu-4", "rouge-1", "rouge-2", "rouge-l"}
    with pytest.raises(ValueError):
        generation_scores(["a"], ["a", "b"])


def test_bundled_choice_set_is_well_formed() -> None:
    rows = read_choice_file("builtin:mc_basic")
    assert len(rows) == 40 and {row["answer"] for row in rows} <= set("ABCD")
    assert all(len(row["choices"]) == 4 for row in rows)


def test_choice_file_forms_and_errors(tmp_path: Path) -> None:
    csv_file = tmp_path / "mmlu.csv"
    csv_file.write_text("question,A,B,C,D,answer\n2+2?,3,4,5,6,B\n")
    assert read_choice_file(str(csv_file)) == [
        {"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": "B", "subject": "all"}
    ]
    indexed = tmp_path / "indexed.json"
    indexed.write_text(json.dumps([{"question": "q", "choices": ["x", "y"], "answer": 1}]))
    assert read_choice_file(str(indexed))[0]["answer"] == "B"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["x", "y"], "answer": "A"}) + "\n"
                   + json.dumps({"question": "q", "choices": ["x", "y"], "answer": "E"}) + "\n")  # fmt: skip
    with pytest.raises(DataError, match=r"bad\.jsonl row 2: 'answer' must be a choice letter \(A-B\)"):
        read_choice_file(str(bad))
    with pytest.raises(DataError, match=r"builtin:nope.*builtin:mc_basic"):
        read_choice_file("builtin:nope")
