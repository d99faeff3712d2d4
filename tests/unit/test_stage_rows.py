"""Canonical rows of every stage (sft, pt, preference, kto) from each LLaMA-Factory format and plain
rows, and the DataErrors that name the column or turn to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raytune_ft.data.formats import normalize_example, normalize_row
from raytune_ft.data.sources import DataError, DatasetSource

NAMES = {"name": "Raytune"}
CUSTOM_TAGS = {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}


def source(
    formatting: str | None, columns: dict[str, str] | None = None, tags: dict[str, str] | None = None
) -> DatasetSource:
    return DatasetSource("d", Path("d.json"), formatting, columns or {}, tags or {})


ALPACA_PAIRS = source("alpaca", {"prompt": "question", "chosen": "good", "rejected": "bad", "system": "sys"})
SHAREGPT_PAIRS = source("sharegpt", {"messages": "dialog", "chosen": "win", "rejected": "lose"}, CUSTOM_TAGS)
SHAREGPT_KTO = source("sharegpt", {"messages": "dialog", "kto_tag": "ok"}, CUSTOM_TAGS)
OPENAI = source("openai")
OPENAI_KTO = source("openai", {"kto_tag": "thumbs_up"})


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# --- sft ----------------------------------------------------------------------------------------


def test_sft_wraps_normalize_row() -> None:
    row = {"instruction": "Who are you?", "input": "", "output": "I am {{name}}."}
    assert normalize_example(row, "sft", NAMES, "r") == {"messages": [user("Who are you?"), bot("I am Raytune.")]}
    assert normalize_example(row, "sft", NAMES, "r")["messages"] == normalize_row(row, NAMES, "r")


# --- pt -----------------------------------------------------------------------------------------


def test_pt_reads_the_text_column_by_default_verbatim() -> None:
    # Raw corpora hold code and wiki markup: "{{...}}" there is text, not a placeholder.
    row = {"text": "{{name}} reads plain text.\n", "id": 3}
    assert normalize_example(row, "pt", NAMES, "r") == {"text": "{{name}} reads plain text.\n"}
    assert normalize_example(row, "pt", NAMES, "r", source("alpaca")) == {"text": "{{name}} reads plain text.\n"}


def test_pt_reads_the_column_mapped_as_prompt() -> None:
    # LLaMA-Factory's wikipedia_zh entry: "columns": {"prompt": "completion"}
    row = {"completion": "Some article.", "text": "not this"}
    assert normalize_example(row, "pt", NAMES, "r", source("alpaca", {"prompt": "completion"})) == {
        "text": "Some article."
    }


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"body": "x"}, r"r: missing column 'text' holding the pre-training text; found: body .*\"prompt\""),
        ({"text": 5}, r"r: column 'text' must be non-empty text, got int 5"),
        ({"text": None}, r"r: column 'text' must be non-empty text, got nothing"),
        ({"text": "  \n"}, r"r: column 'text' must be non-empty text, got str '  \\n'"),
    ],
)
def test_pt_errors(row: dict[str, Any], problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        normalize_example(row, "pt", NAMES, "r")


# --- preference ---------------------------------------------------------------------------------


def test_preference_alpaca_with_columns() -> None:
    row = {
        "question": "Add.",
        "input": "2+2",
        "good": "4",
        "bad": "5",
        "sys": "Be {{name}}.",
        "history": [["hi", "hey"]],
    }
    assert normalize_example(row, "preference", NAMES, "r", ALPACA_PAIRS) == {
        "messages": [{"role": "system", "content": "Be Raytune."}, user("hi"), bot("hey"), user("Add.\n2+2")],
        "chosen": "4",
        "rejected": "5",
    }


def test_preference_alpaca_default_columns() -> None:
    # LLaMA-Factory's ultrafeedback entry: ranking alpaca rows with instruction/chosen/rejected.
    row = {"instruction": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
    assert normalize_example(row, "preference", NAMES, "r", source("alpaca")) == {
        "messages": [user("Name a colour.")],
        "chosen": "Blue.",
        "rejected": "Seven.",
    }


def test_preference_sharegpt_with_custom_tags() -> None:
    row = {
        "dialog": [
            {"speaker": "system", "text": "S"},
            {"speaker": "me", "text": "Q1"},
            {"speaker": "bot", "text": "A1"},
            {"speaker": "me", "text": "Q2 {{name}}"},
        ],
        "win": {"speaker": "bot", "text": "good {{name}}"},
        "lose": {"speaker": "bot", "text": "bad"},
    }
    assert normalize_example(row, "preference", NAMES, "r", SHAREGPT_PAIRS) == {
        "messages": [{"role": "system", "content": "S"}, user("Q1"), bot("A1"), user("Q2 Raytune")],
        "chosen": "good Raytune",
        "rejected": "bad",
    }


def test_preference_sharegpt_default_tags() -> None:
    row = {
        "conversations": [{"from": "human", "value": "Q"}],
        "chosen": {"from": "gpt", "value": "yes"},
        "rejected": {"from": "gpt", "value": "no"},
    }
    assert normalize_example(row, "preference", NAMES, "r", source("sharegpt")) == {
        "messages": [user("Q")],
        "chosen": "yes",
        "rejected": "no",
    }


def test_preference_openai() -> None:
    row = {"messages": [user("Q")], "chosen": bot("yes"), "rejected": bot("no")}
    assert normalize_example(row, "preference", NAMES, "r", OPENAI) == {
        "messages": [user("Q")],
        "chosen": "yes",
        "rejected": "no",
    }


@pytest.mark.parametrize(
    ("row", "messages"),
    [
        ({"prompt": "Q {{name}}", "chosen": "yes", "rejected": "no"}, [user("Q Raytune")]),
        ({"prompt": [user("Q1"), bot("A1"), user("Q2")], "chosen": "yes", "rejected": "no"},
         [user("Q1"), bot("A1"), user("Q2")]),
        ({"messages": [{"role": "system", "content": "S"}, user("Q")], "chosen": "yes", "rejected": "no"},
         [{"role": "system", "content": "S"}, user("Q")]),
        ({"instruction": "Q", "input": "ctx", "chosen": "yes", "rejected": "no"}, [user("Q\nctx")]),
    ],
)  # fmt: skip
def test_preference_plain_rows(row: dict[str, Any], messages: list[dict[str, str]]) -> None:
    expected = {"messages": messages, "chosen": "yes", "rejected": "no"}
    assert normalize_example(row, "preference", NAMES, "r") == expected
    assert normalize_example(row, "preference", NAMES, "r", source(None)) == expected


@pytest.mark.parametrize(
    ("row", "src", "problem"),
    [
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, None,
         "columns 'chosen' and 'rejected' hold the same reply"),
        ({"prompt": "Q", "chosen": "{{name}}", "rejected": "Raytune"}, None, "hold the same reply"),
        ({"prompt": "Q", "chosen": " ", "rejected": "no"}, None, "column 'chosen' is empty"),
        ({"question": "Q", "good": "yes", "bad": ""}, ALPACA_PAIRS, "column 'bad' is empty"),
        ({"prompt": "Q", "chosen": "yes"}, None,
         r"missing column 'rejected' \(a reply of the preference pair\); found: chosen, prompt"),
        ({"question": "Q", "bad": "no"}, ALPACA_PAIRS, "missing column 'good'"),
        ({"good": "yes", "bad": "no"}, ALPACA_PAIRS, r"missing column 'question' \(the alpaca 'prompt' column\)"),
        ({"prompt": "Q", "chosen": [bot("yes")], "rejected": "no"}, None,
         r"column 'chosen' must be the reply text \(a string\), got list"),
        ({"prompt": 7, "chosen": "yes", "rejected": "no"}, None,
         r"'prompt' must be a list of \{role, content\} objects"),
        ({"prompt": [{"role": "user"}], "chosen": "yes", "rejected": "no"}, None,
         r"prompt\[0\] needs a string 'content'"),
        ({"prompt": [user("Q"), bot("A")], "chosen": "yes", "rejected": "no"}, None,
         r"the prompt must end with a user message \(chosen and rejected are the replies to it\)"),
        ({"question": "", "good": "yes", "bad": "no"}, ALPACA_PAIRS, r"message 0 \(user\) is empty"),
        ({"chosen": "yes", "rejected": "no"}, None,
         r"a preference row needs 'prompt' \(text or messages\), 'messages' or alpaca 'instruction'"),
        ({"dialog": [{"speaker": "me", "text": "Q"}], "win": "yes", "lose": {"speaker": "bot", "text": "no"}},
         SHAREGPT_PAIRS, r"column 'win' must hold one reply turn such as \{'speaker': 'bot', 'text': '...'\}, got str"),
        ({"dialog": [{"speaker": "me", "text": "Q"}], "lose": {"speaker": "bot", "text": "no"}},
         SHAREGPT_PAIRS, r"column 'win' must hold one reply turn .*got nothing \(found: dialog, lose\)"),
        ({"dialog": [{"speaker": "me", "text": "Q"}], "win": {"speaker": "me", "text": "yes"},
          "lose": {"speaker": "bot", "text": "no"}}, SHAREGPT_PAIRS, "column 'win' must be an assistant turn"),
        ({"dialog": [{"speaker": "me", "text": "Q"}], "win": {"speaker": "bot", "text": 1},
          "lose": {"speaker": "bot", "text": "no"}}, SHAREGPT_PAIRS,
         r"column 'win' needs 'speaker' in \['bot', 'function_call', 'me', 'observation', 'system'\] and a "
         r"string 'text'"),
        ({"messages": [user("Q")], "chosen": {"role": "tool", "content": "{}"}, "rejected": bot("no")}, OPENAI,
         r"column 'chosen' must be an assistant turn"),
        ({"dialog": [{"speaker": "me", "text": "Q"}, {"speaker": "bot", "text": "A"}],
          "win": {"speaker": "bot", "text": "yes"}, "lose": {"speaker": "bot", "text": "no"}}, SHAREGPT_PAIRS,
         "the prompt must end with a user message"),
    ],
)  # fmt: skip
def test_preference_errors(row: dict[str, Any], src: DatasetSource | None, problem: str) -> None:
    with pytest.raises(DataError, match=rf"^row 9: .*{problem}"):
        normalize_example(row, "preference", NAMES, "row 9", src)


# --- kto ----------------------------------------------------------------------------------------


def test_kto_alpaca_with_columns() -> None:
    # LLaMA-Factory's ultrafeedback_kto entry maps prompt/response/kto_tag like this.
    src = source("alpaca", {"prompt": "prompt", "response": "completion", "kto_tag": "label"})
    row = {"prompt": "Q", "completion": "A by {{name}}", "label": False}
    assert normalize_example(row, "kto", NAMES, "r", src) == {
        "messages": [user("Q"), bot("A by Raytune")],
        "label": False,
    }


def test_kto_sharegpt_with_custom_tags() -> None:
    row = {"dialog": [{"speaker": "me", "text": "Q"}, {"speaker": "bot", "text": "A"}], "ok": True}
    assert normalize_example(row, "kto", NAMES, "r", SHAREGPT_KTO) == {"messages": [user("Q"), bot("A")], "label": True}


def test_kto_openai() -> None:
    row = {"messages": [user("Q1"), bot("A1"), user("Q2"), bot("A2")], "thumbs_up": False}
    assert normalize_example(row, "kto", NAMES, "r", OPENAI_KTO) == {
        "messages": [user("Q1"), bot("A1"), user("Q2"), bot("A2")],
        "label": False,
    }


@pytest.mark.parametrize("src", [None, source(None), source("alpaca")])
def test_kto_plain_rows_use_the_label_column(src: DatasetSource | None) -> None:
    row = {"instruction": "Q", "input": "", "output": "A", "label": True}
    assert normalize_example(row, "kto", NAMES, "r", src) == {"messages": [user("Q"), bot("A")], "label": True}


@pytest.mark.parametrize(
    ("row", "src", "problem"),
    [
        ({"messages": [user("Q"), bot("A")]}, None,
         r"column 'label' must hold the KTO label, true \(desirable\) or false \(undesirable\); got nothing "
         r"\(found: messages\)"),
        ({"messages": [user("Q"), bot("A")], "label": 1}, None, "column 'label' must hold the KTO label.*got int 1$"),
        ({"messages": [user("Q"), bot("A")], "thumbs_up": "true"}, OPENAI_KTO,
         "column 'thumbs_up' must hold the KTO label.*got str 'true'$"),
        ({"messages": [user("Q")], "label": True}, None, "must end with an assistant message"),
        ({"dialog": [{"speaker": "me", "text": "Q"}, {"speaker": "robot", "text": "A"}], "ok": True}, SHAREGPT_KTO,
         r"turn 1 needs 'speaker' in \['bot', 'function_call', 'me', 'observation', 'system'\]"),
    ],
)  # fmt: skip
def test_kto_errors(row: dict[str, Any], src: DatasetSource | None, problem: str) -> None:
    with pytest.raises(DataError, match=rf"^row 9: .*{problem}"):
        normalize_example(row, "kto", NAMES, "row 9", src)


# --- any stage ----------------------------------------------------------------------------------


def test_unknown_stage_lists_the_known_ones() -> None:
    known = "sft, pt, preference, kto, prompt"
    with pytest.raises(DataError, match=rf"^r: stage 'dpo' has no row format; use one of {known}$"):
        normalize_example({"text": "x"}, "dpo", NAMES, "r")


JUNK_ROWS: list[dict[str, Any]] = [
    {},
    {"text": None, "label": None, "chosen": None, "rejected": None, "prompt": None, "messages": None},
    {"instruction": 1, "output": 2, "chosen": 3, "rejected": 4, "label": "yes"},
    {"messages": [1, None], "conversations": "x", "prompt": [None], "chosen": {}, "rejected": []},
    {"messages": {"role": "user"}, "conversations": [{"from": None}], "chosen": {"from": 1, "value": 2}},
    {"history": "x", "instruction": "Q", "output": "A", "question": ["Q"], "good": {}, "bad": None, "label": True},
]


@pytest.mark.parametrize("stage", ["sft", "pt", "preference", "kto"])
@pytest.mark.parametrize(
    "src", [None, ALPACA_PAIRS, SHAREGPT_PAIRS, OPENAI_KTO], ids=["plain", "alpaca", "sharegpt", "openai"]
)
@pytest.mark.parametrize("row", JUNK_ROWS)
def test_malformed_rows_raise_only_data_errors(row: dict[str, Any], src: DatasetSource | None, stage: str) -> None:
    with pytest.raises(DataError, match=r"^junk: "):
        normalize_example(row, stage, NAMES, "junk", src)
