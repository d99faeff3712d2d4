"""Named chat templates (``data.template``): LLaMA-Factory's prompt formats, encoded token for token as it does.

A named template encodes a conversation element by element (``chat_formats.Template`` slots): each text
element is tokenized on its own and each special-token element is put in by id. The pieces come out as
``encode.Segment`` values at that same granularity, so ``encode.encode_full`` reproduces LLaMA-Factory's
ids exactly: SentencePiece tokenizers prepend "▁" to every encode call, and BPE never merges across an
element boundary. Labels follow LLaMA-Factory's supervised, pairwise and feedback processors (answers and
function calls are learned, prompts and tool results are not; ``mask_history``; ``efficient_eos``;
thinking templates). ``apply_template`` installs a Jinja chat template that renders the same prompt text,
and it is what checkpoints save, so chat and serve prompt the model as it was trained. Many templates end
answers with a stop word that is not the eos (yi's ``<|im_end|>``); the stop words are saved with the
tokenizer too, and ``saved_stop_token_ids`` gives inference every id an answer may end with.

Missing tokens. A template whose eos is replaced by its first stop word (``replace_eos``, e.g. llama3's
``<|eot_id|>``), or that names a token element (chatglm3's ``[gMASK]``), needs that token in the vocabulary.
LLaMA-Factory adds a missing one as a new special token and warns to set ``resize_vocab``; its embedding
row is then random and untrained, so a model cannot learn to stop on it (nor read it) unless the
embeddings are trained too. We refuse such a tokenizer with an error that names the token instead. Extra
stop words the vocabulary lacks are simply not stop tokens here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raytune_ft.config import DataConfig
from raytune_ft.config.template_names import unknown_template, unknown_tool_format

from .chat_formats import EOS, TEMPLATE_TABLE, Element, Special, Template, Token
from .encode import FirstLabel, Piece, Segment
from .sources import DataError
from .tool_formats import TOOL_FORMATS, ToolCall

__all__ = [
    "STOP_WORDS_KEY",
    "TEMPLATES",
    "TEMPLATE_NAMES",
    "TOOL_FORMAT_NAMES",
    "Template",
    "TemplateOptions",
    "apply_template",
    "check_template_name",
    "check_tool_format",
    "prompt_answer_segments",
    "saved_stop_token_ids",
    "saved_stop_words",
    "stop_token_ids",
    "template_jinja",
    "template_options",
    "template_segments",
]

TEMPLATES: dict[str, Template] = {template.name: template for template in TEMPLATE_TABLE}
TEMPLATE_NAMES: tuple[str, ...] = tuple(sorted(TEMPLATES))
TOOL_FORMAT_NAMES: tuple[str, ...] = tuple(sorted(TOOL_FORMATS))

Message = Mapping[str, str]
_ROLES = ("user", "assistant", "function", "observation")


@dataclass(frozen=True)
class TemplateOptions:
    """The settings that change how a named template encodes (``DataConfig`` fields of the same names)."""

    enable_thinking: bool | None = True
    preserve_thinking: bool = False
    tool_format: str | None = None
    default_system: str | None = None


_DEFAULTS = TemplateOptions()


def template_options(cfg: DataConfig) -> TemplateOptions:
    """The template settings of a ``data`` section."""
    return TemplateOptions(cfg.enable_thinking, cfg.preserve_thinking, cfg.tool_format, cfg.default_system)


def check_template_name(name: str) -> Template:
    """The template called ``name``, or a DataError that suggests the closest name."""
    if name not in TEMPLATES:
        raise DataError(unknown_template(name))
    return TEMPLATES[name]


def check_tool_format(name: str) -> str:
    """``name`` when it is a tool format, else a DataError suggesting the close one."""
    if name not in TOOL_FORMATS:
        raise DataError(unknown_tool_format(name))
    return name


@functools.lru_cache(maxsize=64)
def _resolved(name: str, tool_format: str | None, default_system: str | None) -> Template:
    """Template ``name`` with the run's overrides, as LLaMA-Factory applies them: a ``tool_format`` writes
    function calls in plain ``{{content}}`` slots (plus eos), dropping the template's own call slot."""
    template = check_template_name(name)
    changes: dict[str, Any] = {}
    if tool_format is not None:
        plain: tuple[Element, ...] = ("{{content}}",) if template.efficient_eos else ("{{content}}", EOS)
        changes |= {
            "function": plain,
            "calls": check_tool_format(tool_format),
            "tools": tool_format,
            "tools_wrap": None,
        }
    if default_system is not None:
        changes["default_system"] = default_system
    return dataclasses.replace(template, **changes) if changes else template


def _template(name: str, options: TemplateOptions) -> Template:
    return _resolved(name, options.tool_format, options.default_system)


# --- encoding -------------------------------------------------------------------------------------


def template_segments(
    tokenizer: Any,
    name: str,
    messages: Sequence[Message],
    tools: str = "",
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    options: TemplateOptions = _DEFAULTS,
) -> list[Segment]:
    """A supervised sample: every answer (and function call) learned, or with ``mask_history`` the last
    one only; prompts learned too with ``train_on_prompt``. ``messages`` may open with a system message,
    then alternate user/observation and assistant/function turns; ``tools`` is the JSON tool list."""
    template = _template(name, options)
    if train_on_prompt and template.efficient_eos:
        raise DataError(_NO_TRAIN_ON_PROMPT.format(name=name))
    encoder = _Encoder(tokenizer, template, options)
    system, turns = _split_system(messages)
    pairs = encoder.multiturn(
        turns, system, tools, discard_history_thoughts=mask_history and not options.preserve_thinking
    )
    segments: list[Segment] = []
    for k, (prompt, answer) in enumerate(pairs):
        turn = len(pairs) - 1 - k if mask_history else k  # LLaMA-Factory counts turns from the last one here
        prompt_learn: bool | FirstLabel = False
        if train_on_prompt:
            prompt_learn = True
        elif template.efficient_eos and turn != 0:
            prompt_learn = FirstLabel(encoder.eos_id())  # the previous answer's eos, learned in this position
        segments += _labelled(prompt, prompt_learn) + _labelled(answer, not (mask_history and turn != 0))
    if template.efficient_eos:
        segments.append(((encoder.eos_id(),), True))
    return segments


def prompt_answer_segments(
    tokenizer: Any, name: str, messages: Sequence[Message], tools: str = "", options: TemplateOptions = _DEFAULTS
) -> list[Segment]:
    """One scored answer (preference pairs, KTO): everything before the last turn is prompt, the last turn
    is learned (as LLaMA-Factory's ``encode_oneturn``)."""
    encoder = _Encoder(tokenizer, _template(name, options), options)
    system, turns = _split_system(messages)
    prompt, answer = encoder.oneturn(turns, system, tools)
    segments = _labelled(prompt, False) + _labelled(answer, True)
    if encoder.template.efficient_eos:
        segments.append(((encoder.eos_id(),), True))
    return segments


_NO_TRAIN_ON_PROMPT = (
    "template {name!r} learns the eos in place of the next prompt's first token (efficient_eos), so it cannot "
    "learn prompts: unset data.train_on_prompt (LLaMA-Factory refuses this pair too)"
)


def _labelled(pieces: list[Piece], learn: bool | FirstLabel) -> list[Segment]:
    if isinstance(learn, FirstLabel):
        return [(piece, learn if i == 0 else False) for i, piece in enumerate(pieces)]
    return [(piece, learn) for piece in pieces]


def _split_system(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return "", list(messages)


class _Encoder:
    """One conversation's pieces under one template (LLaMA-Factory's ``Template._encode`` and friends)."""

    def __init__(self, tokenizer: Any, template: Template, options: TemplateOptions) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.options = options

    def multiturn(
        self, messages: Sequence[Message], system: str, tools: str, discard_history_thoughts: bool
    ) -> list[tuple[list[Piece], list[Piece]]]:
        t = self.template
        turns = [dict(m) for m in messages]
        if t.reasoning and self.options.enable_thinking is False:
            self._drop_thoughts(turns, range(1, len(turns), 2))
        if t.reasoning and discard_history_thoughts:
            self._drop_thoughts(turns, range(1, len(turns) - 2, 2))
        encoded = self.messages(turns, system, tools)
        if t.reasoning:
            for i in [len(turns) - 2] if discard_history_thoughts else range(0, len(turns), 2):
                if not _has_thought(t, turns[i + 1]["content"]):
                    self._add_empty_thought(encoded[i], encoded[i + 1])
        return [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]

    def oneturn(self, messages: Sequence[Message], system: str, tools: str) -> tuple[list[Piece], list[Piece]]:
        t = self.template
        turns = [dict(m) for m in messages]
        if t.reasoning and not self.options.preserve_thinking:
            self._drop_thoughts(turns, range(1, len(turns) - 2, 2))
        if t.reasoning and self.options.enable_thinking is False:
            self._drop_thoughts(turns, [len(turns) - 1])
        encoded = self.messages(turns, system, tools)
        prompt, answer = [piece for pieces in encoded[:-1] for piece in pieces], encoded[-1]
        if t.reasoning and not _has_thought(t, turns[-1]["content"]):
            self._add_empty_thought(prompt, answer)
        return prompt, answer

    def _drop_thoughts(self, turns: list[dict[str, str]], indices: Iterable[int]) -> None:
        for i in indices:
            turns[i]["content"] = _remove_thought(self.template, turns[i]["content"])

    def _add_empty_thought(self, prompt: list[Piece], answer: list[Piece]) -> None:
        """Thinking on: the answer learns an empty thought; off (or None): the prompt carries it."""
        empty = _empty_thought(self.template)
        if self.options.enable_thinking:
            answer.insert(0, empty)
        else:
            prompt.append(empty)

    def messages(self, turns: Sequence[Message], system: str, tools: str) -> list[list[Piece]]:
        """Each turn's pieces; the first turn also carries the prefix and the system message (with tools)."""
        t = self.template
        system = system or t.default_system
        encoded = []
        for i, message in enumerate(turns):
            elements: list[Element] = []
            fused = ""
            if i == 0:
                elements += t.prefix
                if system or tools:
                    head = _fill(t.system, content=system + (self._tools_text(tools) if tools else ""))
                    if t.fuse_system:
                        fused = str(head[0])
                    else:
                        elements += head
            elements += self._turn(message, fused)
            encoded.append(self._pieces(elements))
        return encoded

    def _turn(self, message: Message, fused: str) -> list[Element]:
        t, role, content = self.template, message["role"], message["content"]
        if role == "user":
            return _fill(t.user, content=fused + content)  # fused is "" unless the template fuses the system
        if role == "assistant":
            return _fill(t.assistant, content=content)
        if role == "observation":
            return _fill(t.observation, content=content)
        if role == "function":
            return _fill(t.function, content=self._calls_text(content))
        raise DataError(f"template {t.name!r} has no role {role!r}; roles are system (first), {', '.join(_ROLES)}")

    def _tools_text(self, tools: str) -> str:
        t = self.template
        if t.tools_wrap is not None:
            return t.tools_wrap.replace("{{content}}", tools, 1)
        try:
            definitions = json.loads(tools)
            return TOOL_FORMATS[t.tools].describe(definitions) if len(definitions) != 0 else ""
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise DataError(f"the tools column cannot be written in the {t.tools!r} tool format: {_why(err)}") from None

    def _calls_text(self, content: str) -> str:
        """A function-call turn: its JSON calls in the template's call format; a thought before them (or text
        around ``<tool_call>`` markers) is kept as written. Templates that fuse the system message see no markers."""
        t = self.template
        if t.fuse_system:
            return self._format_calls(content)
        wrapped = re.search(_between(t.tool_call_words), content, re.DOTALL)
        if wrapped is not None:
            return content.replace(wrapped.group(0), "") + self._format_calls(wrapped.group(1))
        thought = re.search(_between(t.thought_words), content, re.DOTALL)
        if thought is None:
            return self._format_calls(content)
        return thought.group(0) + self._format_calls(content.replace(thought.group(0), ""))

    def _format_calls(self, text: str) -> str:
        calls = _parse_calls(text)
        try:
            return TOOL_FORMATS[self.template.calls].call(calls)
        except (ValueError, TypeError, AttributeError) as err:
            raise DataError(
                f"the function call cannot be written in the {self.template.calls!r} tool format: {_why(err)}"
            ) from None

    def _pieces(self, elements: list[Element]) -> list[Piece]:
        pieces: list[Piece] = []
        for element in elements:
            if isinstance(element, str):
                if element:
                    pieces.append(element)
            elif isinstance(element, Token):
                pieces.append((_token_id(self.tokenizer, element.text, self.template.name),))
            else:
                token_id = self.eos_id() if element == EOS else self.bos_id()
                if token_id is not None:
                    pieces.append((token_id,))
        return pieces

    def bos_id(self) -> int | None:
        bos = getattr(self.tokenizer, "bos_token", None)
        return None if bos is None else _token_id(self.tokenizer, bos, self.template.name)

    def eos_id(self) -> int:
        """The eos after ``apply_template``: the first stop word with ``replace_eos``, else the tokenizer's."""
        t = self.template
        eos = t.stop_words[0] if t.replace_eos else getattr(self.tokenizer, "eos_token", None)
        if eos is None:
            raise DataError(
                f"template {t.name!r} ends answers with the tokenizer's eos token, but this tokenizer has none"
            )
        return _token_id(self.tokenizer, eos, t.name)


def _fill(slots: Sequence[Element], **values: str) -> list[Element]:
    """The slots with ``{{name}}`` replaced (once per text element, in argument order, as LLaMA-Factory does)."""
    filled: list[Element] = []
    for slot in slots:
        if isinstance(slot, str):
            for key, value in values.items():
                slot = slot.replace("{{" + key + "}}", value, 1)
        filled.append(slot)
    return filled


def _between(words: tuple[str, str]) -> str:
    return f"{re.escape(words[0])}(.*?){re.escape(words[1])}"


def _remove_thought(template: Template, content: str) -> str:
    return re.sub(_between(template.thought_words), "", content, flags=re.DOTALL).lstrip("\n")


def _has_thought(template: Template, content: str) -> bool:
    opening, closing = (word.strip() for word in template.thought_words)
    return opening in content or closing in content


def _empty_thought(template: Template) -> str:
    return template.empty_thought if template.empty_thought is not None else "".join(template.thought_words)


def _parse_calls(text: str) -> list[ToolCall]:
    """``{"name", "arguments"}`` objects (one, or a list of parallel calls) as (name, arguments JSON)."""
    try:
        calls = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            'a function-call turn must hold JSON {"name": ..., "arguments": {...}} (or a list of them): '
            f"{err.msg} in {text[:80]!r}"
        ) from None
    calls = calls if isinstance(calls, list) else [calls]
    try:
        return [(call["name"], json.dumps(call["arguments"], ensure_ascii=False)) for call in calls]
    except (KeyError, TypeError):
        raise DataError(f"every call of a function-call turn needs 'name' and 'arguments'; got {text[:80]!r}") from None


def _why(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if not isinstance(err, DataError) else str(err)


def _token_id(tokenizer: Any, token: str, name: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != getattr(tokenizer, "unk_token", None)):
        raise DataError(
            f"template {name!r} needs the token {token!r}, which this tokenizer does not have; choose the template "
            "of the model's own family, or leave data.template unset to keep the tokenizer's own chat template"
        )
    return int(token_id)


# --- installing on a tokenizer -----------------------------------------------------------------


def apply_template(
    tokenizer: Any, name: str, options: TemplateOptions = _DEFAULTS, train_on_prompt: bool = False
) -> Any:
    """Install template ``name`` on ``tokenizer``; returns the tokenizer.

    The eos becomes the first stop word where the template replaces it (LLaMA-Factory's ``replace_eos``),
    so generation stops there; that token must already be one token of the vocabulary, as must every
    token element (see the module docstring). The chat template becomes ``template_jinja``'s rendering,
    and the template's stop words are recorded under ``STOP_WORDS_KEY`` (saved with the tokenizer), so
    inference stops where answers end: ``saved_stop_token_ids``.
    """
    template = _template(name, options)
    if train_on_prompt and template.efficient_eos:
        raise DataError(_NO_TRAIN_ON_PROMPT.format(name=name))
    _check_tokens(tokenizer, template)
    if template.replace_eos and tokenizer.eos_token != template.stop_words[0]:
        tokenizer.eos_token = template.stop_words[0]
    # Stop words become special tokens, so text never merges across them (LLaMA-Factory adds them as
    # special tokens); only those already in the vocabulary: a new one would be an untrained embedding row.
    known = [word for word in template.stop_words if _in_vocabulary(tokenizer, word)]
    if known:
        tokenizer.add_tokens(known, special_tokens=True)
    tokenizer.chat_template = template_jinja(tokenizer, name, options)
    init_kwargs = getattr(tokenizer, "init_kwargs", None)  # RowTokenizer has none: it is never saved
    if isinstance(init_kwargs, dict):
        init_kwargs[STOP_WORDS_KEY] = list(template.stop_words)
    return tokenizer


STOP_WORDS_KEY = "raytune_ft_stop_words"
"""Where ``apply_template`` records the template's stop words: an ``init_kwargs`` entry of a transformers
tokenizer, which ``save_pretrained`` writes to ``tokenizer_config.json`` and loading reads back."""


def stop_token_ids(tokenizer: Any, name: str, options: TemplateOptions = _DEFAULTS) -> list[int]:
    """The ids generation under template ``name`` stops at: the eos (the first stop word where the template
    replaces it) and every stop word that is one token of this tokenizer's vocabulary. Many templates end
    answers with a stop word that is not the eos (yi, glm4, gemma2, cpm4, ...: ``<|im_end|>`` after a yi
    answer, never the eos), so stopping at the eos alone runs past the answer."""
    template = _template(name, options)
    eos = template.stop_words[0] if template.replace_eos else getattr(tokenizer, "eos_token", None)
    return _vocabulary_ids(tokenizer, [eos, *template.stop_words])


def saved_stop_words(tokenizer: Any) -> tuple[str, ...]:
    """The stop words of the template ``apply_template`` installed on ``tokenizer``, also after
    ``save_pretrained`` and loading again (a checkpoint's tokenizer); () where none was installed."""
    init_kwargs = getattr(tokenizer, "init_kwargs", None) or {}
    return tuple(init_kwargs.get(STOP_WORDS_KEY) or ())


def saved_stop_token_ids(tokenizer: Any) -> list[int]:
    """``stop_token_ids`` of a tokenizer loaded from a checkpoint, without knowing the template's name: its
    eos and every saved stop word that is one token of its vocabulary (just the eos without a template)."""
    return _vocabulary_ids(tokenizer, [getattr(tokenizer, "eos_token", None), *saved_stop_words(tokenizer)])


def _vocabulary_ids(tokenizer: Any, words: Sequence[str | None]) -> list[int]:
    ids: list[int] = []
    for word in words:
        if word and _in_vocabulary(tokenizer, word):
            token_id = int(tokenizer.convert_tokens_to_ids(word))
            if token_id not in ids:
                ids.append(token_id)
    return ids


def _check_tokens(tokenizer: Any, template: Template) -> None:
    if template.replace_eos and not _is_single_token(tokenizer, template.stop_words[0]):
        raise DataError(
            f"template {template.name!r} ends answers with the token {template.stop_words[0]!r}, which this "
            "tokenizer does not have; choose the template of the model's own family (`template: default` ends "
            "answers with the tokenizer's own eos token), or leave `template` unset to keep the tokenizer's own "
            "chat template"
        )
    slots = (
        template.prefix,
        template.user,
        template.assistant,
        template.system,
        template.function,
        template.observation,
    )
    for element in (e for slot in slots for e in slot):
        if isinstance(element, Token):
            _token_id(tokenizer, element.text, template.name)
    uses_eos = template.efficient_eos or any(e == EOS for slot in slots for e in slot)
    if uses_eos and not template.replace_eos and not getattr(tokenizer, "eos_token", None):
        raise DataError(
            f"template {template.name!r} ends answers with the tokenizer's eos token, but this tokenizer has none; "
            "use a template with its own stop token (e.g. chatml)"
        )


def _in_vocabulary(tokenizer: Any, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and (token_id != tokenizer.unk_token_id or token == tokenizer.unk_token)


def _is_single_token(tokenizer: Any, text: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return False
    return bool(tokenizer(text, add_special_tokens=False)["input_ids"] == [token_id])


def template_jinja(tokenizer: Any, name: str, options: TemplateOptions = _DEFAULTS) -> str:
    """A Hugging Face chat template rendering the prompt text ``prompt_answer_segments`` encodes for an
    empty answer: prefix, system (or the default one), user and assistant turns (earlier thoughts dropped
    as LLaMA-Factory drops them) and, for a thinking template with thinking not on, the empty thought block
    that opens the answer. The bos/eos text is this tokenizer's (after ``apply_template``'s eos swap)."""
    t = _template(name, options)
    special = _special_texts(tokenizer, t)
    system = _expr(t.system[:1] if t.fuse_system else t.system, special, "system_message")
    lines = [
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "  {%- set system_message = messages[0]['content'] -%}",
        "  {%- set loop_messages = messages[1:] -%}",
        "{%- else -%}",
        "  {%- set system_message = '' -%}",
        "  {%- set loop_messages = messages -%}",
        "{%- endif -%}",
        f"{{%- if not system_message -%}}{{%- set system_message = {_quote(t.default_system)} -%}}{{%- endif -%}}",
        "{%- for message in loop_messages -%}",
        "  {%- set content = message['content'] -%}",
        "  {%- if loop.first -%}",
        f"    {{{{- {_expr(t.prefix, special)} -}}}}",
    ]
    if t.fuse_system:
        lines.append(
            "    {%- if system_message and message['role'] == 'user' -%}"
            f"{{%- set content = {system} + content -%}}{{%- endif -%}}"
        )
    else:
        lines.append(f"    {{%- if system_message -%}}{{{{- {system} -}}}}{{%- endif -%}}")
    lines += [
        "  {%- endif -%}",
        "  {%- if message['role'] == 'user' -%}",
        f"    {{{{- {_expr(t.user, special)} -}}}}",
        "  {%- elif message['role'] == 'assistant' -%}",
        *(_jinja_drop_thought(t) if t.reasoning and not options.preserve_thinking else []),
        f"    {{{{- {_expr(t.assistant, special)} -}}}}",
        "  {%- elif message['role'] == 'system' -%}",
        f"    {{{{- raise_exception('chat template {t.name}: a system message is only allowed first') -}}}}",
        "  {%- else -%}",
        f"    {{{{- raise_exception('chat template {t.name} renders user and assistant turns, not ' "
        "+ message['role']) -}}",
        "  {%- endif -%}",
        "{%- endfor -%}",
    ]
    if t.reasoning and options.enable_thinking is not True:
        lines += ["{%- if add_generation_prompt -%}", f"  {{{{- {_quote(_empty_thought(t))} -}}}}", "{%- endif -%}"]
    return "\n".join(lines)


def _jinja_drop_thought(t: Template) -> list[str]:
    """Earlier answers lose their thought blocks (and leading newlines), as ``_remove_thought`` does."""
    opening, closing = (_quote(word) for word in t.thought_words)
    return [
        f"    {{%- set parts = content.split({opening}) -%}}",
        "    {%- set ns = namespace(text=parts[0]) -%}",
        "    {%- for part in parts[1:] -%}",
        f"      {{%- if {closing} in part -%}}{{%- set ns.text = ns.text + part.split({closing}, 1)[1] -%}}",
        f"      {{%- else -%}}{{%- set ns.text = ns.text + {opening} + part -%}}{{%- endif -%}}",
        "    {%- endfor -%}",
        "    {%- set content = ns.text.lstrip('\\n') -%}",
    ]


def _special_texts(tokenizer: Any, t: Template) -> dict[Special, str]:
    eos = t.stop_words[0] if t.replace_eos else getattr(tokenizer, "eos_token", None)
    return {Special("bos"): getattr(tokenizer, "bos_token", None) or "", Special("eos"): eos or ""}


def _expr(slots: Sequence[Element], special: Mapping[Special, str], placeholder: str = "content") -> str:
    """A Jinja expression concatenating the slots' text, with ``{{content}}`` as the variable ``placeholder``."""
    parts: list[str] = []
    for element in slots:
        if isinstance(element, Special):
            parts.append(_quote(special[element]))
        elif isinstance(element, Token):
            parts.append(_quote(element.text))
        else:
            pieces = element.split("{{content}}", 1)
            parts.append(_quote(pieces[0]))
            if len(pieces) > 1:
                parts += [placeholder, _quote(pieces[1])]
    return " + ".join(part for part in parts if part != "''") or "''"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"
