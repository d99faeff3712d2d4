"""LLaMA-Factory ``dataset_info.json`` entries: lookup, formats, column/tag mappings, and errors
that name the entry and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raytune_ft.data import DataError, normalize_row, resolve_datasets

NAMES: dict[str, str] = {}


def registry(tmp_path: Path, entries: dict[str, object], files: dict[str, object] | None = None) -> Path:
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries))
    for name, rows in (files or {}).items():
        (tmp_path / name).write_text(json.dumps(rows))
    return tmp_path


def test_registry_entry_wins_and_resolves_relative_to_dataset_dir(tmp_path: Path) -> None:
    folder = registry(tmp_path, {"identity": {"file_name": "mine.json"}}, {"mine.json": []})
    [source] = resolve_datasets(["identity"], folder)
    assert source.path == (folder / "mine.json").resolve()
    assert source.formatting == "alpaca" and source.reader == "json"


def test_missing_registry_file_falls_back_to_bundled(tmp_path: Path) -> None:
    [source] = resolve_datasets(["identity"], tmp_path)
    assert source.path.name == "identity.jsonl"


def test_alpaca_with_renamed_columns(tmp_path: Path) -> None:
    entry = {"file_name": "a.json", "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys"}}
    [source] = resolve_datasets(["qa"], registry(tmp_path, {"qa": entry}, {"a.json": []}))
    row = {"q": "Add.", "ctx": "2+2", "a": "4", "sys": "Be exact."}
    assert normalize_row(row, NAMES, "r", source) == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Add.\n2+2"},
        {"role": "assistant", "content": "4"},
    ]
    with pytest.raises(DataError, match=r"r: missing column 'a' \(the alpaca 'response' column\); found: q"):
        normalize_row({"q": "Add."}, NAMES, "r", source)


def test_sharegpt_default_and_custom_tags(tmp_path: Path) -> None:
    entries = {
        "plain": {"file_name": "s.json", "formatting": "sharegpt"},
        "custom": {
            "file_name": "c.json",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog"},
            "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
        },
    }
    plain, custom = resolve_datasets(["plain", "custom"], registry(tmp_path, entries, {"s.json": [], "c.json": []}))
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    assert [m["role"] for m in normalize_row(row, NAMES, "r", plain)] == ["system", "user", "assistant"]
    row = {"dialog": [{"speaker": "me", "text": "Q1"}, {"speaker": "bot", "text": "A1"},
                      {"speaker": "me", "text": "Q2"}, {"speaker": "bot", "text": "A2"}]}  # fmt: skip
    assert [m["content"] for m in normalize_row(row, NAMES, "r", custom)] == ["Q1", "A1", "Q2", "A2"]
    with pytest.raises(DataError, match=r"turn 1 needs 'speaker' in \['bot', 'function_call', 'me', 'observation', "):
        normalize_row(
            {"dialog": [{"speaker": "me", "text": "Q"}, {"speaker": "robot", "text": "A"}]}, NAMES, "r", custom
        )


def test_openai_format_and_tool_turns(tmp_path: Path) -> None:
    [source] = resolve_datasets(
        ["oa"], registry(tmp_path, {"oa": {"file_name": "o.json", "formatting": "openai"}}, {"o.json": []})
    )
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert normalize_row(row, NAMES, "r", source) == row["messages"]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"},
                         {"role": "assistant", "content": "A"}]}  # fmt: skip
    assert normalize_row(tool, NAMES, "r", source) == [
        {"role": "user", "content": "Q"},
        {"role": "function", "content": '[{"name": "f", "arguments": "{}"}]'},
        {"role": "observation", "content": "1\n</tool_response>\n<tool_response>\n2"},
        {"role": "assistant", "content": "A"},
    ], "tool calls become a function-call turn, consecutive tool results one observation (as LLaMA-Factory)"
    with pytest.raises(DataError, match="message 1 has role 'observation', expected 'assistant' or 'function'"):
        normalize_row({"messages": [tool["messages"][0], tool["messages"][2]]}, NAMES, "r", source)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        # The hub cache is read; offline (HF_HUB_OFFLINE=1 in tests) a missing repository says how to fetch it.
        (
            {"hf_hub_url": "org/data"},
            r"dataset 'org/data' \(revision main\) from the Hugging Face Hub is not \(wholly\) "
            r"in the cache.*hf download org/data --repo-type dataset",
        ),
        (
            {"ms_hub_url": "org/data"},
            r"from ModelScope is not \(wholly\) in the cache.*modelscope download "
            r"--repo-type dataset org/data",
        ),
        ({"file_name": "nope.json"}, "file_name 'nope.json' not found"),
        ({"file_name": "x.json", "formatting": "chatml"}, "formatting 'chatml' is unknown"),
        ({"file_name": "x.json", "subsett": "a"}, r"keys \['subsett'\] are not supported"),
    ],
)
def test_entries_we_cannot_honour_name_the_entry(tmp_path: Path, entry: dict[str, object], problem: str) -> None:
    folder = registry(tmp_path, {"d": entry}, {"x.json": []})
    with pytest.raises(DataError, match=rf"dataset_info.json entry 'd': .*{problem}"):
        resolve_datasets(["d"], folder)


def test_ranking_entries_train_only_preference_stages(tmp_path: Path) -> None:
    from raytune_ft.data.sources import check_row_format

    folder = registry(tmp_path, {"pairs": {"file_name": "x.json", "ranking": True}, "chat": {"file_name": "x.json"}},
                      {"x.json": []})  # fmt: skip
    pairs, chat = resolve_datasets(["pairs", "chat"], folder)
    assert (pairs.ranking, chat.ranking) == (True, False)
    check_row_format([pairs], "preference")
    with pytest.raises(DataError, match=r"'pairs' is a ranking .*method.stage rm or dpo"):
        check_row_format([pairs], "sft")
    with pytest.raises(DataError, match=r"'chat' has no chosen/rejected pairs .*ranking"):
        check_row_format([chat], "preference")
    check_row_format(resolve_datasets(["alpaca_300"], folder), "preference")  # files: rows decide


def test_unknown_name_suggests_registry_entries(tmp_path: Path) -> None:
    folder = registry(tmp_path, {"my_sharegpt": {"file_name": "x.json"}}, {"x.json": []})
    with pytest.raises(DataError, match="Did you mean 'my_sharegpt'"):
        resolve_datasets(["my_sharegtp"], folder)


def test_malformed_registry_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset_info\.json: not valid JSON"):
        resolve_datasets(["x"], tmp_path)


def test_one_file_under_two_formats_is_refused(tmp_path: Path) -> None:
    entries = {"a": {"file_name": "x.json"}, "b": {"file_name": "x.json", "formatting": "sharegpt"}}
    with pytest.raises(DataError, match=r"datasets 'a' and 'b' read the same file"):
        resolve_datasets(["a", "b"], registry(tmp_path, entries, {"x.json": []}))


def test_column_and_tag_typos_suggest_the_key(tmp_path: Path) -> None:
    entries = {
        "a": {"file_name": "x.json", "columns": {"promt": "q"}},
        "b": {"file_name": "y.json", "tags": {"role": "r"}},
    }
    folder = registry(tmp_path, entries, {"x.json": [], "y.json": []})
    with pytest.raises(DataError, match=r"entry 'a': columns: unknown key 'promt'; did you mean 'prompt'"):
        resolve_datasets(["a"], folder)
    with pytest.raises(DataError, match=r"entry 'b': tags: unknown key 'role'; did you mean 'role_tag'"):
        resolve_datasets(["b"], folder)


def test_folder_sources_need_one_kind_of_file(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.jsonl").write_text("")
    assert resolve_datasets([str(tmp_path / "parts")])[0].reader == "json"
    (tmp_path / "parts" / "b.csv").write_text("")
    with pytest.raises(DataError, match=r"must hold files of one kind .*found a\.jsonl, b\.csv"):
        resolve_datasets([str(tmp_path / "parts")])
