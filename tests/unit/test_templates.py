"""Named chat templates, by hand: thinking modes, system fusion, tool rows and their masks, efficient eos,
installing a template (stop tokens, missing tokens) and its Jinja prompt. test_templates_golden.py holds
every template to LLaMA-Factory's own ids; these tests say in plain text what that behaviour is."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import TemplateError

from raytune_ft.config import template_names
from raytune_ft.data import IGNORE_INDEX, encode_full
from raytune_ft.data.sources import DataError
from raytune_ft.data.templates import (
    STOP_WORDS_KEY,
    TEMPLATE_NAMES,
    TEMPLATES,
    TOOL_FORMAT_NAMES,
    TemplateOptions,
    apply_template,
    check_template_name,
    check_tool_format,
    prompt_answer_segments,
    saved_stop_token_ids,
    saved_stop_words,
    stop_token_ids,
    template_jinja,
    template_segments,
)
from raytune_ft.models import load_tokenizer
from raytune_ft.models.fast_tokenizer import RowTokenizer

BPE = Path(__file__).parents[1] / "fixtures" / "templates" / "bpe"
HI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})
TOOL_ROW = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "function", "content": CALL},
    {"role": "observation", "content": "rain"},
    {"role": "assistant", "content": "It rains."},
]


@pytest.fixture(scope="module")
def bpe() -> Any:
    """A byte-level BPE tokenizer holding every template's special tokens (tests/fixtures/templates)."""
    return load_tokenizer(BPE, require_chat_template=False)


def sample(tok: Any, name: str, messages: list[dict[str, str]], tools: str = "", **kwargs: Any) -> tuple[str, str]:
    """(whole text, learned text) of a supervised sample."""
    [(ids, labels)] = encode_full(tok, [template_segments(tok, name, messages, tools, **kwargs)])
    learned = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    return tok.decode(ids), tok.decode(learned)


def test_config_name_lists_match_the_registry() -> None:
    assert template_names.TEMPLATE_NAMES == TEMPLATE_NAMES
    assert template_names.TOOL_FORMAT_NAMES == TOOL_FORMAT_NAMES
    named = {"qwen3", "qwen3_nothink", "qwen", "llama3", "llama2", "mistral", "gemma", "gemma3", "phi4", "deepseek3",
             "glm4", "yi", "baichuan2", "chatglm3", "alpaca", "vicuna", "empty", "default", "chatml"}  # fmt: skip
    assert named <= set(TEMPLATE_NAMES)


def test_slots_fill_only_content() -> None:
    # The engine fills {{content}} alone (LLaMA-Factory also passes idx to user slots; no template uses it).
    slots = ("prefix", "user", "assistant", "system", "function", "observation")
    for template in TEMPLATES.values():
        for element in (e for slot in slots for e in getattr(template, slot) if isinstance(e, str)):
            assert set(re.findall(r"\{\{(\w+)\}\}", element)) <= {"content"}, (template.name, element)


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(DataError, match=r"unknown chat template 'qwen3_no_think' \(did you mean 'qwen3_nothink'\?\)"):
        check_template_name("qwen3_no_think")
    with pytest.raises(DataError, match=r"unknown tool format 'qwen35' \(did you mean 'qwen3_5'\?\); choose one of"):
        check_tool_format("qwen35")
    assert check_template_name("llama3") is TEMPLATES["llama3"]


def test_qwen3_thinking_modes(bpe: Any) -> None:
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    empty = "<think>\n\n</think>\n\n"
    # Thinking on (LLaMA-Factory's default): the answer learns an empty thought block.
    assert sample(bpe, "qwen3", HI) == (prompt + empty + "Hello!<|im_end|>\n", empty + "Hello!<|im_end|>\n")
    # Off: the empty block is prompt, thoughts the data holds are dropped.
    off = TemplateOptions(enable_thinking=False)
    assert sample(bpe, "qwen3", HI, options=off) == (prompt + empty + "Hello!<|im_end|>\n", "Hello!<|im_end|>\n")
    cot = [HI[0], {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"}]
    assert sample(bpe, "qwen3", cot, options=off)[1] == "Hello!<|im_end|>\n"
    # None: thoughts the data holds are learned; answers without one get the empty block as prompt.
    unset = TemplateOptions(enable_thinking=None)
    assert sample(bpe, "qwen3", cot, options=unset)[1] == "<think>\nGreet back.\n</think>\n\nHello!<|im_end|>\n"
    assert sample(bpe, "qwen3", HI, options=unset)[1] == "Hello!<|im_end|>\n"
    # qwen3_nothink is the same format without thinking.
    assert sample(bpe, "qwen3_nothink", HI) == (prompt + "Hello!<|im_end|>\n", "Hello!<|im_end|>\n")


def test_llama2_fuses_the_system_message_into_the_first_user_turn(bpe: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *HI, *HI]
    text, learned = sample(bpe, "llama2", messages)
    first = "<|begin_of_text|>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello!<|end_of_text|>"
    assert text == first + "<|begin_of_text|>[INST] Hi [/INST]Hello!<|end_of_text|>"
    assert learned == "Hello!<|end_of_text|>Hello!<|end_of_text|>"


def test_default_system_and_its_override(bpe: Any) -> None:
    qwen = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    assert sample(bpe, "qwen", HI)[0].startswith(qwen)
    own = TemplateOptions(default_system="Be kind.")
    assert sample(bpe, "qwen", HI, options=own)[0].startswith(
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user"
    )
    given = [{"role": "system", "content": "Be brief."}, *HI]
    assert sample(bpe, "qwen", given, options=own)[0].startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_tool_rows_learn_calls_and_answers_not_results(bpe: Any) -> None:
    text, learned = sample(bpe, "qwen", TOOL_ROW, json.dumps([WEATHER]))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
    assert learned == call + "It rains.<|im_end|>\n"
    assert "# Tools\n\nYou may call one or more functions" in text and '"name": "get_weather"' in text
    result = "<|im_start|>user\n<tool_response>\nrain\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert result in text and result not in learned


@pytest.mark.parametrize(
    ("tool_format", "call"),
    [
        ("default", 'Action: get_weather\nAction Input: {"city": "Oslo"}'),
        ("llama3", '{"name": "get_weather", "parameters": {"city": "Oslo"}}'),
        ("mistral", '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]'),
        ("glm4", 'get_weather\n{"city": "Oslo"}'),
    ],
)
def test_tool_format_override_writes_calls_in_plain_slots(bpe: Any, tool_format: str, call: str) -> None:
    """As LLaMA-Factory: the call is written in the chosen format and followed by the eos alone (qwen's is
    <|im_end|>), not by the template's own call slot (which adds a newline)."""
    options = TemplateOptions(tool_format=tool_format)
    learned = sample(bpe, "qwen", TOOL_ROW, json.dumps([WEATHER]), options=options)[1]
    assert learned == call + "<|im_end|>It rains.<|im_end|>\n"


def test_malformed_function_calls_are_data_errors(bpe: Any) -> None:
    with pytest.raises(DataError, match="a function-call turn must hold JSON"):
        template_segments(bpe, "qwen", [TOOL_ROW[0], {"role": "function", "content": "get_weather(Oslo)"}])
    with pytest.raises(DataError, match="needs 'name' and 'arguments'"):
        template_segments(bpe, "qwen", [TOOL_ROW[0], {"role": "function", "content": '{"name": "x"}'}])
    parallel = json.dumps([json.loads(CALL)] * 2)
    with pytest.raises(DataError, match="glm4 tool format has no parallel calls"):
        template_segments(bpe, "glm4", [TOOL_ROW[0], {"role": "function", "content": parallel}])


def test_efficient_eos_learns_the_eos_in_place_of_the_next_prompt(bpe: Any) -> None:
    """glm4 answers carry no eos: the position after each answer is labelled eos, and one eos ends the sample."""
    [(ids, labels)] = encode_full(bpe, [template_segments(bpe, "glm4", [*HI, *HI])])
    eos = bpe.convert_tokens_to_ids("<|end_of_text|>")
    user = bpe.convert_tokens_to_ids("<|user|>")
    second = ids.index(user, ids.index(user) + 1)
    assert (ids[second], labels[second]) == (user, eos), "the second prompt's first token is labelled eos"
    assert (ids[-1], labels[-1]) == (eos, eos)
    learned = [label for label in labels if label != IGNORE_INDEX]
    assert bpe.decode(learned) == "\nHello!<|end_of_text|>\nHello!<|end_of_text|>"
    with pytest.raises(DataError, match=r"cannot learn prompts: unset data\.train_on_prompt"):
        template_segments(bpe, "glm4", HI, train_on_prompt=True)


def test_mask_history_and_train_on_prompt(bpe: Any) -> None:
    two = [*HI, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
    assert sample(bpe, "chatml", two, mask_history=True)[1] == "Ciao<|im_end|>\n"
    text, learned = sample(bpe, "chatml", HI, train_on_prompt=True)
    assert learned == text


def test_pairs_and_kto_score_only_the_last_turn(bpe: Any) -> None:
    cot = [
        *HI,
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "<think>\nx\n</think>\n\nJust so."},
    ]
    history = [*HI[:1], {"role": "assistant", "content": "<think>\nold\n</think>\n\nHello!"}, *cot[2:]]
    [(ids, labels)] = encode_full(bpe, [prompt_answer_segments(bpe, "qwen3", history)])
    assert "old" not in bpe.decode(ids), "earlier thoughts are dropped from the prompt"
    assert (
        bpe.decode([label for label in labels if label != IGNORE_INDEX])
        == "<think>\nx\n</think>\n\nJust so.<|im_end|>\n"
    )


def test_apply_template_makes_the_stop_word_eos(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = "<|endoftext|>"
    assert apply_template(tok, "chatml") is tok
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", tok.convert_tokens_to_ids("<|im_end|>"))
    assert tok.chat_template == template_jinja(tok, "chatml")


def test_missing_stop_and_token_elements_are_refused(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    with pytest.raises(DataError, match=r"template 'llama3' ends answers with the token '<\|eot_id\|>', which this"):
        apply_template(tok, "llama3")
    assert (tok.eos_token, tok.chat_template) == (tokenizer.eos_token, tokenizer.chat_template), "left untouched"
    with pytest.raises(DataError, match=r"template 'chatglm3' needs the token '\[gMASK\]'"):
        apply_template(tok, "chatglm3")
    tok.add_tokens(["<|eot_id|>"], special_tokens=True)  # a vocabulary that has it (e.g. trained embeddings)
    assert apply_template(tok, "llama3").eos_token_id == len(tokenizer)


def test_stop_words_become_special_but_missing_ones_are_not_added(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    before = tok("x \n###", add_special_tokens=False)["input_ids"]
    apply_template(tok, "yi_vl")  # stop word "###": a special token now, as LLaMA-Factory makes it
    assert tok("x \n###", add_special_tokens=False)["input_ids"] != before
    apply_template(tok, "falcon_h1")  # stop words <|im_end|> and <|end_of_text|>, which SmolLM2 lacks
    assert len(tok) == len(tokenizer) and tok.convert_tokens_to_ids("<|end_of_text|>") == tok.unk_token_id


def test_stop_token_ids_hold_the_stop_words_answers_end_with(bpe: Any, tmp_path: Path) -> None:
    tok = copy.deepcopy(bpe)
    eos, im_end = tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")
    # yi keeps the tokenizer's eos, and a trained answer ends with <|im_end|> (then "\n"), never with the eos.
    [(ids, labels)] = encode_full(tok, [template_segments(tok, "yi", HI)])
    learned = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert im_end in learned and eos not in ids
    apply_template(tok, "yi")
    assert stop_token_ids(tok, "yi") == [eos, im_end]
    # The stop words travel with the tokenizer a checkpoint saves; loaded again, it still stops at <|im_end|>.
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())[STOP_WORDS_KEY] == ["<|im_end|>"]
    loaded = load_tokenizer(tmp_path)
    assert saved_stop_words(loaded) == ("<|im_end|>",)
    assert saved_stop_token_ids(loaded) == [eos, im_end]
    # A template whose stop word replaces the eos: that one token (and its other stop words).
    eot, eom = (tok.convert_tokens_to_ids(word) for word in ("<|eot_id|>", "<|eom_id|>"))
    assert stop_token_ids(bpe, "llama3") == [eot, eom]
    assert saved_stop_token_ids(apply_template(tok, "llama3")) == [eot, eom]
    # No stop words: the eos alone, and installing such a template clears the record of the last one.
    apply_template(tok, "default")
    assert (saved_stop_words(tok), saved_stop_token_ids(tok)) == ((), [tok.eos_token_id])
    assert saved_stop_words(load_tokenizer(BPE, require_chat_template=False)) == ()


def test_stop_token_ids_on_the_workers_tokenizer_and_a_vocabulary_without_them(tokenizer: Any) -> None:
    rows = apply_template(RowTokenizer.from_folder(BPE), "yi")  # the data workers' tokenizer (never saved)
    assert stop_token_ids(rows, "yi") == stop_token_ids(load_tokenizer(BPE, require_chat_template=False), "yi")
    assert saved_stop_words(rows) == ()
    # SmolLM2 lacks glm4's stop words <|user|> and <|observation|>: they are not stop tokens there.
    tok = apply_template(copy.deepcopy(tokenizer), "glm4")
    assert stop_token_ids(tok, "glm4") == saved_stop_token_ids(tok) == [tok.eos_token_id]
    assert saved_stop_words(tok) == ("<|user|>", "<|observation|>")


def test_templates_ending_answers_with_eos_need_one(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = None
    with pytest.raises(DataError, match="'default' ends answers with the tokenizer's eos token"):
        apply_template(tok, "default")


def test_jinja_prompt_opens_the_answer_as_training_did(bpe: Any) -> None:
    tok = apply_template(copy.deepcopy(bpe), "qwen3", TemplateOptions(enable_thinking=False))
    history = [{"role": "system", "content": "Be brief."}, *HI, {"role": "user", "content": "Again?"}]
    history[2] = {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello!"}
    rendered = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
        "<|im_end|>\n<|im_start|>user\nAgain?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    with pytest.raises(TemplateError, match="renders user and assistant turns, not observation"):
        tok.apply_chat_template([HI[0], {"role": "observation", "content": "x"}], tokenize=False)
    with pytest.raises(TemplateError, match="a system message is only allowed first"):
        tok.apply_chat_template([*HI, {"role": "system", "content": "late"}], tokenize=False)


def test_template_settings_shape_the_tokenized_data_fingerprint(tokenizer: Any) -> None:
    from raytune_ft.config import DataConfig
    from raytune_ft.data.cache import data_fingerprint

    base = DataConfig(template="qwen3")
    prints = [
        data_fingerprint(base.model_copy(update=change), tokenizer, "m", seed=0)
        for change in ({}, {"template": "qwen3_nothink"}, {"enable_thinking": False}, {"enable_thinking": None},
                       {"preserve_thinking": True}, {"tool_format": "llama3"}, {"default_system": "Be kind."})
    ]  # fmt: skip
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)
