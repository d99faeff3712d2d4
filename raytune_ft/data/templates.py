"""Named chat templates for base models whose tokenizer has none (LLaMA-Factory's ``template:`` option).

Each template is a Hugging Face ``chat_template`` Jinja string in the prompt format LLaMA-Factory uses for
that name, written so that a conversation's rendering is a prefix of any longer one's and every answer span
ends with the stop marker: ``encode.render_segments`` locates the learned spans by rendering prefixes.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from .sources import DataError

__all__ = ["TEMPLATES", "TEMPLATE_NAMES", "ChatTemplate", "apply_template", "check_template_name"]


@dataclass(frozen=True)
class ChatTemplate:
    """A named prompt format: its Jinja and the marker that ends an answer."""

    name: str
    """The name users write in ``template:``."""
    jinja: str
    """The Hugging Face ``chat_template`` Jinja source; roles system, user and assistant."""
    stop: str
    """The text that ends an assistant turn and becomes the eos token; ``""``: the tokenizer's own eos token."""


# Slot texts use {content} and {eos}; everything else is literal text.
_PLACEHOLDERS = {"{content}": "content", "{eos}": "eos_token"}
_SPLIT = re.compile("(" + "|".join(re.escape(p) for p in _PLACEHOLDERS) + ")")


def _expr(slot: str, content: str = "content") -> str:
    """A Jinja expression concatenating the slot's literal pieces and variables."""
    names = {**_PLACEHOLDERS, "{content}": content}
    parts = [names.get(piece) or _quote(piece) for piece in _SPLIT.split(slot) if piece]
    return " + ".join(parts) or "''"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _build(
    name: str,
    *,
    system: str,
    user: str,
    header: str,
    answer: str,
    stop: str = "",
    bos: bool = False,
    default_system: str = "",
    fuse_system: bool = False,
) -> ChatTemplate:
    """Jinja for one format: ``user`` renders a user turn, ``header + answer`` an assistant turn.

    ``header`` alone is the generation prompt, so the answer span is exactly ``answer`` (ending with the
    stop marker). ``bos`` opens the text with the bos token when the tokenizer has one, as LLaMA-Factory
    does. With ``fuse_system`` the system text is prepended to the first user turn (formats without a
    system role). Every tag strips the whitespace around it, so the line breaks are for reading only.
    """
    system_text = _expr(system, "system_message")
    lines = [*_preamble(name, "{eos}" in system + user + answer, default_system, bos)]
    if not fuse_system:
        lines += ["{%- if system_message -%}", f"  {{{{- {system_text} -}}}}", "{%- endif -%}"]
    lines += ["{%- for message in loop_messages -%}", "  {%- set content = message['content'] -%}"]
    if fuse_system:
        lines += [
            "  {%- if loop.first and system_message -%}",
            "    {%- if message['role'] != 'user' -%}",
            f"      {{{{- raise_exception('chat template {name} needs a user message after the system message') -}}}}",
            "    {%- endif -%}",
            f"    {{%- set content = {system_text} + content -%}}",
            "  {%- endif -%}",
        ]
    lines += [
        "  {%- if message['role'] == 'user' -%}",
        f"    {{{{- {_expr(user)} -}}}}",
        "  {%- elif message['role'] == 'assistant' -%}",
        f"    {{{{- {_expr(header + answer)} -}}}}",
        "  {%- elif message['role'] == 'system' -%}",
        f"    {{{{- raise_exception('chat template {name}: a system message is only allowed first') -}}}}",
        "  {%- else -%}",
        f"    {{{{- raise_exception('chat template {name} has no role ' + message['role']) -}}}}",
        "  {%- endif -%}",
        "{%- endfor -%}",
    ]
    if header:
        lines += ["{%- if add_generation_prompt -%}", f"  {{{{- {_expr(header)} -}}}}", "{%- endif -%}"]
    return ChatTemplate(name=name, jinja="\n".join(lines), stop=stop)


def _preamble(name: str, needs_eos: bool, default_system: str, bos: bool) -> list[str]:
    """Checks, the system message (or the default one) split off the turns, and the bos token."""
    lines = []
    if needs_eos:
        lines += [
            "{%- if eos_token is not defined or not eos_token -%}",
            f"  {{{{- raise_exception('chat template {name} needs a tokenizer with an eos_token') -}}}}",
            "{%- endif -%}",
        ]
    lines += [
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "  {%- set system_message = messages[0]['content'] -%}",
        "  {%- set loop_messages = messages[1:] -%}",
        "{%- else -%}",
        "  {%- set system_message = '' -%}",
        "  {%- set loop_messages = messages -%}",
        "{%- endif -%}",
    ]
    if default_system:
        lines += [
            "{%- if not system_message -%}",
            f"  {{%- set system_message = {_quote(default_system)} -%}}",
            "{%- endif -%}",
        ]
    if bos:
        lines += ["{%- if bos_token is defined and bos_token -%}", "  {{- bos_token -}}", "{%- endif -%}"]
    return lines


def _chatml(name: str, default_system: str = "") -> ChatTemplate:
    return _build(
        name,
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        header="<|im_start|>assistant\n",
        answer="{content}<|im_end|>\n",
        stop="<|im_end|>",
        default_system=default_system,
    )


_ALL = [
    _build(
        "default",
        system="System: {content}{eos}\n",
        user="Human: {content}{eos}\n",
        header="Assistant:",
        answer="{content}{eos}\n",
    ),
    _chatml("chatml"),
    _build(
        "llama3",
        bos=True,
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        answer="{content}<|eot_id|>",
        stop="<|eot_id|>",
    ),
    _chatml("qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    _build(
        "mistral",
        bos=True,
        system="{content}\n\n",
        user="[INST] {content}[/INST]",
        header="",
        answer=" {content}{eos}",
        fuse_system=True,
    ),
    _build(
        "gemma",
        bos=True,
        system="{content}\n\n",
        user="<start_of_turn>user\n{content}<end_of_turn>\n",
        header="<start_of_turn>model\n",
        answer="{content}<end_of_turn>\n",
        stop="<end_of_turn>",
        fuse_system=True,
    ),
    _build(
        "phi",
        system="<|system|>\n{content}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n",
        header="<|assistant|>\n",
        answer="{content}<|end|>\n",
        stop="<|end|>",
    ),
]
TEMPLATES: dict[str, ChatTemplate] = {template.name: template for template in _ALL}
TEMPLATE_NAMES: tuple[str, ...] = tuple(TEMPLATES)


def check_template_name(name: str) -> ChatTemplate:
    """The template called ``name``, or a DataError that lists the names and suggests the close one."""
    if name not in TEMPLATES:
        close = difflib.get_close_matches(name, TEMPLATE_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"unknown chat template {name!r}{hint}; choose one of: {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[name]


def apply_template(tokenizer: Any, name: str) -> Any:
    """Install template ``name`` on ``tokenizer`` and make its stop marker the eos token; returns the tokenizer.

    Generation then stops at the marker (LLaMA-Factory's ``replace_eos``). The marker must already be one
    token: adding it would need a resized, untrained embedding row.
    """
    template = check_template_name(name)
    if template.stop:
        if not _is_single_token(tokenizer, template.stop):
            raise DataError(
                f"template {name!r} ends answers with the token {template.stop!r}, which this tokenizer does not "
                "have; use `template: default` (it ends answers with the tokenizer's own eos token) or leave "
                "`template` unset to keep the tokenizer's own chat template"
            )
        if tokenizer.eos_token != template.stop:
            tokenizer.eos_token = template.stop
    elif not tokenizer.eos_token:
        raise DataError(
            f"template {name!r} ends answers with the tokenizer's eos token, but this tokenizer has none; "
            f"use a template with its own stop token ({', '.join(t.name for t in _ALL if t.stop)})"
        )
    tokenizer.chat_template = template.jinja
    return tokenizer


def _is_single_token(tokenizer: Any, text: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return False
    return bool(tokenizer(text, add_special_tokens=False)["input_ids"] == [token_id])
