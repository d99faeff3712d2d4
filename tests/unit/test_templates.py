"""Named chat templates: LLaMA-Factory's prompt formats, prefix-consistent rendering, stop tokens."""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

import pytest
from jinja2.exceptions import TemplateError

from raytune_ft.data import IGNORE_INDEX, encode_batch, render_segments
from raytune_ft.data.sources import DataError
from raytune_ft.data.templates import TEMPLATE_NAMES, TEMPLATES, apply_template

THREE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
]
FIVE = [*THREE, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
BOS = "<s>"  # passed to the renderer, so the expected strings read like the real models' prompts

# The SmolLM2 vocabulary has <|im_end|> but none of <|eot_id|>, <end_of_turn>, <|end|>.
APPLICABLE = ("default", "chatml", "qwen", "mistral")
MISSING_STOP = ("llama3", "gemma", "phi")

# LLaMA-Factory's formats written out by hand for FIVE (SmolLM2's eos is <|im_end|>).
EXPECTED = {
    "default": (
        "System: Be brief.<|im_end|>\nHuman: Hi<|im_end|>\nAssistant:Hello!<|im_end|>\n"
        "Human: 2+2?<|im_end|>\nAssistant:4<|im_end|>\n"
    ),
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    ),
    "llama3": (
        "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
    ),
    "mistral": "<s>[INST] Be brief.\n\nHi[/INST] Hello!<|im_end|>[INST] 2+2?[/INST] 4<|im_end|>",
    "gemma": (
        "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
    ),
    "phi": (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\n2+2?<|end|>\n<|assistant|>\n4<|end|>\n"
    ),
}
EXPECTED["qwen"] = EXPECTED["chatml"]


def with_jinja(tokenizer: Any, name: str) -> Any:
    """A copy rendering template ``name`` without touching the eos token (works without the stop token)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TEMPLATES[name].jinja
    return tok


def render(tok: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, bos_token=BOS)
    return str(text)


def stop_of(tok: Any, name: str) -> str:
    return TEMPLATES[name].stop or str(tok.eos_token)


def test_registry_has_the_llamafactory_names() -> None:
    assert set(TEMPLATE_NAMES) >= {"default", "chatml", "llama3", "qwen", "mistral", "gemma", "phi"}
    assert tuple(TEMPLATES) == TEMPLATE_NAMES
    assert all(template.name == name for name, template in TEMPLATES.items())
    assert set(APPLICABLE) | set(MISSING_STOP) == set(TEMPLATE_NAMES)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_renders_llamafactory_format_exactly(tokenizer: Any, name: str) -> None:
    assert render(with_jinja(tokenizer, name), FIVE) == EXPECTED[name]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@pytest.mark.parametrize("messages", [THREE, FIVE], ids=["3-messages", "5-messages"])
def test_rendering_is_prefix_consistent(tokenizer: Any, name: str, messages: list[dict[str, str]]) -> None:
    tok = with_jinja(tokenizer, name)
    stop = stop_of(tok, name)
    renders = [render(tok, messages[:n]) for n in range(1, len(messages) + 1)]
    for shorter, longer in itertools.pairwise(renders):
        assert longer.startswith(shorter)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tok, messages[:i], generation_prompt=True)
        full = render(tok, messages[: i + 1])
        assert full.startswith(prompt), f"{name}: generation prompt of turn {i} is not a prefix of the turn"
        answer = full[len(prompt) :]
        assert answer.lstrip(" ").startswith(message["content"])
        assert answer.rstrip("\n").endswith(stop), f"{name}: answer {answer!r} does not end with {stop!r}"


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_render_segments_split_prompts_from_answers(tokenizer: Any, name: str) -> None:
    tok = with_jinja(tokenizer, name)
    segments = render_segments(tok, FIVE, train_on_prompt=False)
    assert "".join(text for text, _ in segments) == tok.apply_chat_template(FIVE, tokenize=False)
    assert [trainable for _, trainable in segments] == [False, True, False, True]
    stop = stop_of(tok, name)
    answers = [text.strip(" \n") for text, trainable in segments if trainable]
    assert answers == ["Hello!" + stop, "4" + stop]


@pytest.mark.parametrize("name", APPLICABLE)
def test_apply_template_trains_answers_and_stop_token(tokenizer: Any, name: str) -> None:
    tok = apply_template(copy.deepcopy(tokenizer), name)
    assert tok.chat_template == TEMPLATES[name].jinja
    assert tok.eos_token == stop_of(tokenizer, name)
    [encoded] = encode_batch(tok, [render_segments(tok, FIVE, train_on_prompt=False)], cutoff_len=1024)
    assert encoded is not None
    ids, labels = encoded
    learned = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert learned.count(tok.eos_token_id) == 2, "each answer ends with the token generation stops at"
    assert tok.decode(learned).replace(tok.eos_token, "|").replace("\n", "").replace(" ", "") == "Hello!|4|"


def test_stop_marker_becomes_eos(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = "<|endoftext|>"
    assert apply_template(tok, "chatml") is tok
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", tok.convert_tokens_to_ids("<|im_end|>"))


def test_stop_token_added_to_vocab_is_accepted(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(["<|eot_id|>"], special_tokens=True)
    apply_template(tok, "llama3")
    assert tok.eos_token == "<|eot_id|>"
    assert tok.eos_token_id == len(tokenizer)


@pytest.mark.parametrize("name", MISSING_STOP)
def test_missing_stop_token_is_a_data_error(tokenizer: Any, name: str) -> None:
    tok = copy.deepcopy(tokenizer)
    stop = re.escape(repr(TEMPLATES[name].stop))
    with pytest.raises(DataError, match=rf"template '{name}' ends answers with the token {stop}.*`template: default`"):
        apply_template(tok, name)
    assert tok.eos_token == tokenizer.eos_token and tok.chat_template == tokenizer.chat_template, "left untouched"


def test_eos_template_needs_an_eos_token(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = None
    with pytest.raises(DataError, match="'default' ends answers with the tokenizer's eos token"):
        apply_template(tok, "default")


def test_unknown_name_suggests_the_close_one(tokenizer: Any) -> None:
    with pytest.raises(DataError, match=r"'chatlm' \(did you mean 'chatml'\?\)") as info:
        apply_template(copy.deepcopy(tokenizer), "chatlm")
    assert all(name in str(info.value) for name in TEMPLATE_NAMES)


def test_qwen_uses_its_default_system_prompt(tokenizer: Any) -> None:
    turn = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    default = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    qwen = with_jinja(tokenizer, "qwen")
    assert render(qwen, FIVE[1:3]) == default + turn
    assert render(qwen, [{"role": "system", "content": ""}, *FIVE[1:3]]) == default + turn
    assert render(with_jinja(tokenizer, "chatml"), FIVE[1:3]) == turn


def test_system_is_fused_into_first_user_turn_only_when_given(tokenizer: Any) -> None:
    gemma = with_jinja(tokenizer, "gemma")
    assert (
        render(gemma, FIVE[1:3])
        == "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    )
    with pytest.raises(TemplateError, match="needs a user message after the system message"):
        render(gemma, [FIVE[0], FIVE[2]])


HEADERS = {
    "default": "Assistant:",
    "chatml": "<|im_start|>assistant\n",
    "qwen": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "",
    "gemma": "<start_of_turn>model\n",
    "phi": "<|assistant|>\n",
}


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_generation_prompt_renders_only_the_assistant_header(tokenizer: Any, name: str) -> None:
    tok = with_jinja(tokenizer, name)
    context = render(tok, FIVE[:2])
    assert render(tok, FIVE[:2], generation_prompt=True) == context + HEADERS[name]
    answer = " Hello!" if name == "mistral" else "Hello!"
    assert render(tok, FIVE[:3]).startswith(context + HEADERS[name] + answer)
    assert render(tok, FIVE[:3], generation_prompt=True).endswith(HEADERS[name])


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_unsupported_roles_fail_loudly(tokenizer: Any, name: str) -> None:
    tok = with_jinja(tokenizer, name)
    with pytest.raises(TemplateError, match="has no role tool"):
        render(tok, [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "{}"}])
    with pytest.raises(TemplateError, match="only allowed first"):
        render(tok, [*FIVE[1:3], {"role": "system", "content": "late"}])
