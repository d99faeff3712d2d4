"""RowTokenizer (what the data workers load) gives the same token rows as the transformers tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import TemplateError

from raytune_ft.data import BUILTIN_DATASETS, EncodeOptions, encode_rows
from raytune_ft.data.sources import DataError
from raytune_ft.data.templates import apply_template
from raytune_ft.models import load_row_tokenizer, load_tokenizer
from raytune_ft.models.fast_tokenizer import RowTokenizer

CONVERSATIONS: list[dict[str, Any]] = [
    {"instruction": "Say hi", "input": "", "output": "Hello!"},
    {"instruction": "Translate", "input": "  chat  \n\n", "output": "Bonjour, ça va ? 🙂\t"},
    {"instruction": "Repeat <|im_end|> literally", "input": "", "output": "<|im_end|> and <|im_start|>"},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
    {"messages": [{"role": "user", "content": "只说中文"}, {"role": "assistant", "content": "好的。"}]},
]


def rows() -> list[tuple[str, int, str]]:
    bundled = BUILTIN_DATASETS["alpaca_300"].read_text().splitlines()[:150]
    examples = CONVERSATIONS + [json.loads(line) for line in bundled]
    return [("d.jsonl", i, json.dumps(example, ensure_ascii=False)) for i, example in enumerate(examples, 1)]


def fresh(builtin_dir: Path) -> tuple[Any, RowTokenizer]:
    row = RowTokenizer.from_folder(builtin_dir)
    assert row is not None
    return load_tokenizer(builtin_dir, require_chat_template=False), row


@pytest.mark.parametrize("template", [None, "default", "chatml", "qwen", "mistral"])
@pytest.mark.parametrize(
    "options",
    [{}, {"mask_history": True}, {"train_on_prompt": True}, {"stage": "pt"}],
    ids=["sft", "mask_history", "train_on_prompt", "pt"],
)
def test_token_rows_equal_transformers(builtin_dir: Path, template: str | None, options: dict[str, Any]) -> None:
    hf, row = fresh(builtin_dir)
    if template:
        apply_template(hf, template)
        apply_template(row, template)
    if options.get("stage") == "pt":
        records = [(p, n, json.dumps({"text": json.loads(r).get("output", "x")})) for p, n, r in rows()]
    else:
        records = rows()
    opts = EncodeOptions(cutoff_len=512, template=template, **options)
    expected = encode_rows(hf, opts, [], records)
    got = encode_rows(row, opts, [], records)
    assert not any(r.problem for r in expected)
    assert got == expected


@pytest.mark.parametrize("template", ["llama3", "gemma", "phi"])
def test_missing_stop_token_is_refused_alike(builtin_dir: Path, template: str) -> None:
    for tokenizer in fresh(builtin_dir):
        with pytest.raises(DataError, match="does not have"):
            apply_template(tokenizer, template)


def test_special_tokens_and_lookups_match(builtin_dir: Path) -> None:
    hf, row = fresh(builtin_dir)
    assert row.special_tokens_map == hf.special_tokens_map
    assert row.unk_token_id == hf.unk_token_id
    for token in ("<|im_end|>", "<|im_start|>", "hello", "not-a-token-anywhere"):
        assert row.convert_tokens_to_ids(token) == hf.convert_tokens_to_ids(token)
    expected = hf("Hi there", add_special_tokens=False)["input_ids"]
    assert row("Hi there", add_special_tokens=False) == {"input_ids": expected}


TOOLING = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
    "{{ bos_token }}{{ m['role'] }}:{{ m | tojson }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_jinja_extras_render_as_in_transformers(builtin_dir: Path) -> None:
    """tojson (no HTML escaping), raise_exception, the {% generation %} tag and special-token variables."""
    hf, row = fresh(builtin_dir)
    hf.chat_template = row.chat_template = TOOLING
    messages = [{"role": "user", "content": '<b>é</b> & "q"'}, {"role": "assistant", "content": "ok"}]
    for prompt in (False, True):
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert row.apply_chat_template(messages, add_generation_prompt=prompt) == expected
    with pytest.raises(TemplateError, match="no tools"):
        row.apply_chat_template([{"role": "tool", "content": "x"}])


def test_folder_without_tokenizer_json_falls_back_to_transformers(tmp_path: Path, builtin_dir: Path) -> None:
    assert RowTokenizer.from_folder(tmp_path) is None
    assert isinstance(load_row_tokenizer("builtin:smollm2-135m-instruct"), RowTokenizer)


def test_special_token_outside_the_vocabulary_falls_back(tmp_path: Path, builtin_dir: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((builtin_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|not-in-vocab|>"}))
    assert RowTokenizer.from_folder(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
    row = RowTokenizer.from_folder(tmp_path)
    assert row is not None and row.eos_token == "<|im_end|>" and row.special_tokens_map["pad_token"] == "<|im_end|>"
