# ruff: noqa: RUF001 (the prompts hold full-width punctuation: Chinese text, DeepSeek's markers)
"""LLaMA-Factory's chat templates as data: the prompt format of every name in its registry.

Each entry transcribes one ``register_template`` of LLaMA-Factory 0.9.5 (``baichuan2`` from 0.9.4, where
it was last registered) into a :class:`Template`: per-role slots, the prefix, default system prompt,
stop words, thought and tool-call markers and the flags that change how turns are encoded. The engine
in ``templates.py`` turns a conversation into token pieces from these facts; tests hold every entry to
LLaMA-Factory's own token ids (tests/fixtures/templates).

A slot is a tuple of elements, each encoded on its own as LLaMA-Factory does: text (``{{content}}``
marks where the turn's text goes), ``BOS`` / ``EOS`` (the tokenizer's bos / eos token, left out when it
has none) or ``Token("...")`` (one vocabulary token by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BOS", "EOS", "TEMPLATE_TABLE", "Element", "Special", "Template", "Token"]


@dataclass(frozen=True)
class Special:
    """The tokenizer's bos or eos token, whatever it is."""

    name: str
    """``bos`` or ``eos``."""


@dataclass(frozen=True)
class Token:
    """One vocabulary token, looked up by name (never split by the tokenizer)."""

    text: str


BOS = Special("bos")
EOS = Special("eos")
Element = str | Special | Token
Slots = tuple[Element, ...]

_THINK = ("<think>\n", "\n</think>\n\n")
_TOOL_CALL = ("<tool_call>", "</tool_call>")


@dataclass(frozen=True)
class Template:
    """One named prompt format (LLaMA-Factory's ``Template`` and its subclasses, as data)."""

    name: str
    user: Slots
    assistant: Slots
    system: Slots
    function: Slots
    """A function-call turn; its ``{{content}}`` is the calls written in the ``calls`` tool format."""
    observation: Slots
    """A tool result turn."""
    prefix: Slots = ()
    """Opens the conversation (before the system message)."""
    tools: str = "default"
    """Tool format of the tool definitions appended to the system message."""
    tools_wrap: str | None = None
    """Instead of a tool format: the row's tool JSON as given, put in place of ``{{content}}`` here."""
    calls: str = "default"
    """Tool format of function-call turns."""
    default_system: str = ""
    """System message of rows that have none."""
    stop_words: tuple[str, ...] = ()
    """Tokens that end a turn; with ``replace_eos`` the first becomes the eos token."""
    thought_words: tuple[str, str] = _THINK
    """The markers around a reasoning (chain of thought) block."""
    tool_call_words: tuple[str, str] = _TOOL_CALL
    """The markers a function-call turn may wrap its JSON in (text around them is kept as written)."""
    efficient_eos: bool = False
    """Answers carry no eos in their slot: the eos is learned in place of the next prompt's first token,
    and one eos ends the sample."""
    replace_eos: bool = False
    """The first stop word becomes the eos token (generation stops there; ``EOS`` elements write it)."""
    fuse_system: bool = False
    """No system role: the system text (the system slot's first element) opens the first user turn."""
    reasoning: bool = False
    """A thinking model: answers without a thought block get an empty one (learned, or with thinking off,
    part of the prompt), and earlier turns' thoughts are dropped where LLaMA-Factory drops them."""
    empty_thought: str | None = None
    """The empty thought block; None: both thought words back to back."""
    media: bool = False
    """LLaMA-Factory pairs this template with an image/video/audio processor; its text renders the same."""


def _add(name: str, **fields: Any) -> Template:
    """A template with LLaMA-Factory's defaults for the slots it does not set."""
    fields.setdefault("user", ("{{content}}",))
    fields.setdefault("assistant", ("{{content}}",) if fields.get("efficient_eos") else ("{{content}}", EOS))
    fields.setdefault("system", ("{{content}}",))
    fields.setdefault("function", fields["assistant"])
    fields.setdefault("observation", fields["user"])
    if "tools" in fields:
        fields.setdefault("calls", fields["tools"])
    return Template(name=name, **fields)


_CHATML: dict[str, Any] = dict(
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    observation=("<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
)
_IM: dict[str, Any] = dict(
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
)
_QWEN: dict[str, Any] = dict(
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    function=("{{content}}<|im_end|>\n",),
    observation=(
        "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
    ),
    tools="qwen",
)
_QWEN3_5: dict[str, Any] = {**_QWEN, "tools": "qwen3_5"}
_LLAMA3: dict[str, Any] = dict(
    user=(
        (
            "<|start_header_id|>user<|end_header_id|>\n\n"
            "{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    ),
    assistant=("{{content}}<|eot_id|>",),
    system=("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",),
    function=("{{content}}<|eot_id|>",),
    observation=(
        (
            "<|start_header_id|>ipython<|end_header_id|>\n\n"
            "{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    ),
    tools="llama3",
)
_MISTRAL: dict[str, Any] = dict(
    user=("[INST] {{content}}[/INST]",),
    assistant=(" {{content}}", EOS),
    system=("{{content}}\n\n",),
    function=("[TOOL_CALLS] {{content}}", EOS),
    observation=('[TOOL_RESULTS] {"content": {{content}}}[/TOOL_RESULTS]',),
    tools="mistral",
)
_MINISTRAL: dict[str, Any] = dict(
    user=("[INST]{{content}}[/INST]",),
    system=("{{content}}\n\n",),
    function=("[TOOL_CALLS]{{content}}", EOS),
    observation=('[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]',),
    tools="mistral",
)
_GEMMA: dict[str, Any] = dict(
    user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
    assistant=("{{content}}<end_of_turn>\n",),
    system=("{{content}}\n\n",),
    observation=("<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
)
_GLM4: dict[str, Any] = dict(
    user=("<|user|>\n{{content}}<|assistant|>",),
    assistant=("\n{{content}}",),
    system=("<|system|>\n{{content}}",),
    function=("{{content}}",),
    observation=("<|observation|>\n{{content}}<|assistant|>",),
    tools="glm4",
)
_GLM4_MOE: dict[str, Any] = {**_GLM4, "tools": "glm4_moe"}
_VICUNA: dict[str, Any] = dict(user=("USER: {{content}} ASSISTANT:",))
_DEEPSEEK3: dict[str, Any] = dict(user=("<｜User｜>{{content}}<｜Assistant｜>",))
_LLAMA2: dict[str, Any] = dict(user=(BOS, "[INST] {{content}} [/INST]"), system=("<<SYS>>\n{{content}}\n<</SYS>>\n\n",))
_PHI: dict[str, Any] = dict(
    user=("<|user|>\n{{content}}<|end|>\n<|assistant|>\n",),
    assistant=("{{content}}<|end|>\n",),
    system=("<|system|>\n{{content}}<|end|>\n",),
)
_GEMMA4: dict[str, Any] = dict(
    user=("<|turn>user\n{{content}}<turn|>\n<|turn>model\n",),
    assistant=("{{content}}<turn|>\n",),
    system=("<|turn>system\n<|think|>{{content}}<turn|>\n",),
    function=("<|tool>{{content}}<tool|>",),
    observation=("<|turn>tool\n{{content}}<turn|>\n<|turn>model\n",),
    tools="gemma4",
)
_KIMI: dict[str, Any] = dict(
    user=("<|im_user|>user<|im_middle|>{{content}}<|im_end|><|im_assistant|>assistant<|im_middle|>",),
    assistant=("{{content}}<|im_end|>",),
    system=("<|im_system|>system<|im_middle|>{{content}}<|im_end|>",),
)
_LFM2: dict[str, Any] = dict(
    user=("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
    assistant=("{{content}}<|im_end|>\n",),
    system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
    function=("{{content}}<|im_end|>\n",),
    observation=(
        (
            "<|im_start|>tool\n<|tool_response_start|>{{content}}<|tool_response_end|><|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    ),
    tools="lfm2",
)

TEMPLATE_TABLE: tuple[Template, ...] = (
    _add(
        "alpaca",
        user=("### Instruction:\n{{content}}\n\n### Response:\n",),
        assistant=("{{content}}", EOS, "\n\n"),
        default_system=(
            "Below is an instruction that describes a task. Write a response that appropriately completes "
            "the request.\n\n"
        ),
    ),
    _add(
        "bailing",
        user=("<role>HUMAN</role>{{content}}<role>ASSISTANT</role>",),
        system=("<role>SYSTEM</role>{{content}}",),
        observation=("<role>OBSERVATION</role>{{content}}<role>ASSISTANT</role>",),
        stop_words=("<|endoftext|>",),
        efficient_eos=True,
    ),
    _add(
        "bailing_v2",
        user=("<role>HUMAN</role>{{content}}<|role_end|><role>ASSISTANT</role>",),
        assistant=("{{content}}<|role_end|>",),
        system=("<role>SYSTEM</role>{{content}}<|role_end|>",),
        function=("{{content}}<|role_end|>",),
        observation=(
            (
                "<role>OBSERVATION</role>\n<tool_response>\n{{content}}\n"
                "</tool_response><|role_end|><role>ASSISTANT</role>"
            ),
        ),
        tools="ling",
        stop_words=("<|endoftext|>",),
        efficient_eos=True,
    ),
    _add("breeze", user=("[INST] {{content}} [/INST] ",), prefix=(BOS,), efficient_eos=True),
    _add(
        "chatglm3",
        user=(Token("<|user|>"), "\n", "{{content}}", Token("<|assistant|>")),
        assistant=("\n", "{{content}}"),
        system=(Token("<|system|>"), "\n", "{{content}}"),
        function=("{{content}}",),
        observation=(Token("<|observation|>"), "\n", "{{content}}", Token("<|assistant|>")),
        tools="glm4",
        prefix=(Token("[gMASK]"), Token("sop")),
        stop_words=("<|user|>", "<|observation|>"),
        efficient_eos=True,
    ),
    _add("chatml", **_CHATML, stop_words=("<|im_end|>", "<|im_start|>"), replace_eos=True),
    _add(
        "chatml_de",
        **_CHATML,
        default_system="Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
        stop_words=("<|im_end|>", "<|im_start|>"),
        replace_eos=True,
    ),
    _add(
        "cohere",
        user=(
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        ),
        system=("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>",),
        prefix=(BOS,),
    ),
    _add("cpm4", **_CHATML, prefix=(BOS,), stop_words=("<|im_end|>",)),
    _add(
        "dbrx",
        **_CHATML,
        default_system=(
            "You are DBRX, created by Databricks. You were last updated in December 2023. You answer "
            "questions based on information available up to that point.\nYOU PROVIDE SHORT RESPONSES TO "
            "SHORT QUESTIONS OR STATEMENTS, but provide thorough responses to more complex and open-ended "
            "questions.\nYou assist with various tasks, from writing to coding (using markdown for code "
            "blocks — remember to use ``` with code, JSON, and tables).\n(You do not have real-time data "
            "access or code execution capabilities. You avoid stereotyping and provide balanced "
            "perspectives on controversial topics. You do not provide song lyrics, poems, or news articles "
            "and do not divulge details of your training data.)\nThis is your system prompt, guiding your "
            "responses. Do not reference it, just respond to the user. If you find yourself talking about "
            "this message, stop. You should be responding appropriately and usually that means not "
            "mentioning this.\nYOU DO NOT MENTION ANY OF THIS INFORMATION ABOUT YOURSELF UNLESS THE "
            "INFORMATION IS DIRECTLY PERTINENT TO THE USER'S QUERY."
        ),
        stop_words=("<|im_end|>",),
        replace_eos=True,
    ),
    _add("deepseek", user=("User: {{content}}\n\nAssistant:",), system=("{{content}}\n\n",), prefix=(BOS,)),
    _add("deepseek3", **_DEEPSEEK3, prefix=(BOS,)),
    _add("deepseekr1", **_DEEPSEEK3, prefix=(BOS,), reasoning=True),
    _add(
        "hy3",
        user=("<｜hy_User｜>{{content}}<｜hy_Assistant｜>",),
        assistant=("{{content}}<｜hy_eos｜>",),
        prefix=(BOS,),
        stop_words=("<｜hy_eos｜>",),
        replace_eos=True,
        reasoning=True,
        thought_words=("<think>", "</think>"),
    ),
    _add(
        "deepseekcoder",
        user=("### Instruction:\n{{content}}\n### Response:",),
        assistant=("\n{{content}}\n<|EOT|>\n",),
        prefix=(BOS,),
        default_system=(
            "You are an AI programming assistant, utilizing the DeepSeek Coder model, developed by "
            "DeepSeek Company, and you only answer questions related to computer science. For politically "
            "sensitive questions, security and privacy issues, and other non-computer science questions, "
            "you will refuse to answer.\n"
        ),
    ),
    _add(
        "default",
        user=("Human: {{content}}", EOS, "\nAssistant:"),
        assistant=("{{content}}", EOS, "\n"),
        system=("System: {{content}}", EOS, "\n"),
    ),
    _add(
        "dots_ocr",
        user=("<|user|>{{content}}<|endofuser|><|assistant|>",),
        assistant=("{{content}}<|endofassistant|>",),
        system=("<|system|>{{content}}<|endofsystem|>\n",),
        stop_words=("<|endofassistant|>",),
        efficient_eos=True,
        media=True,
    ),
    _add("empty", assistant=("{{content}}",)),
    _add(
        "ernie",
        user=("<|im_start|>user\n{{content}}<|im_end|>\n\n<|im_start|>assistant\n",),
        assistant=("{{content}}<|im_end|>\n\n",),
        system=("<|im_start|>system\n{{content}}<|im_end|>\n\n",),
        observation=("<|im_start|>tool\n{{content}}<|im_end|>\n\n<|im_start|>assistant\n",),
        default_system="<global_setting>\nthink_mode=True\n</global_setting>",
        stop_words=("<|im_end|>",),
    ),
    _add(
        "ernie_nothink",
        user=("User: {{content}}\nAssistant: ",),
        assistant=("{{content}}<|end_of_sentence|>",),
        system=("{{content}}\n",),
        prefix=("<|begin_of_sentence|>",),
        stop_words=("<|end_of_sentence|>",),
    ),
    _add(
        "ernie_vl",
        user=("User: {{content}}",),
        assistant=("\nAssistant: {{content}}<|end_of_sentence|>",),
        system=("{{content}}\n",),
        stop_words=("<|end_of_sentence|>",),
        replace_eos=True,
        reasoning=True,
        media=True,
    ),
    _add(
        "exaone",
        user=("[|user|]{{content}}\n[|assistant|]",),
        assistant=("{{content}}", EOS, "\n"),
        system=("[|system|]{{content}}[|endofturn|]\n",),
    ),
    _add("falcon", user=("User: {{content}}\nFalcon:",), assistant=("{{content}}\n",), efficient_eos=True),
    _add("falcon_h1", **_CHATML, prefix=(BOS,), stop_words=("<|im_end|>", "<|end_of_text|>")),
    _add("fewshot", assistant=("{{content}}\n\n",), efficient_eos=True),
    _add("gemma", **_GEMMA, prefix=(BOS,), stop_words=("<end_of_turn>",), replace_eos=True, fuse_system=True),
    _add(
        "gemma2", **_GEMMA, prefix=(BOS,), stop_words=("<eos>", "<end_of_turn>"), efficient_eos=True, fuse_system=True
    ),
    _add(
        "gemma3", **_GEMMA, prefix=(BOS,), stop_words=("<end_of_turn>",), replace_eos=True, fuse_system=True, media=True
    ),
    _add(
        "gemma3n",
        **_GEMMA,
        prefix=(BOS,),
        stop_words=("<end_of_turn>",),
        replace_eos=True,
        fuse_system=True,
        media=True,
    ),
    _add(
        "gemma4",
        **_GEMMA4,
        prefix=(BOS,),
        default_system="You are a helpful assistant.",
        stop_words=("<turn|>",),
        replace_eos=True,
        reasoning=True,
        thought_words=("<|channel>thought\n", "<channel|>"),
        media=True,
    ),
    _add(
        "gemma4n",
        **_GEMMA4,
        prefix=(BOS,),
        default_system="You are a helpful assistant.",
        stop_words=("<turn|>",),
        replace_eos=True,
        reasoning=True,
        thought_words=("<|channel>thought\n", "<channel|>"),
        media=True,
    ),
    _add("glm4", **_GLM4, prefix=("[gMASK]<sop>",), stop_words=("<|user|>", "<|observation|>"), efficient_eos=True),
    _add(
        "glm4_moe",
        **_GLM4_MOE,
        prefix=("[gMASK]<sop>",),
        stop_words=("<|user|>", "<|observation|>"),
        efficient_eos=True,
        reasoning=True,
    ),
    _add(
        "glm4v",
        **_GLM4,
        prefix=("[gMASK]<sop>",),
        stop_words=("<|user|>", "<|observation|>", "</answer>"),
        efficient_eos=True,
        reasoning=True,
        media=True,
    ),
    _add(
        "glm4_5v",
        **_GLM4_MOE,
        prefix=("[gMASK]<sop>",),
        stop_words=("<|user|>", "<|observation|>", "</answer>"),
        efficient_eos=True,
        reasoning=True,
        media=True,
    ),
    _add(
        "glm_ocr",
        **_GLM4,
        prefix=("[gMASK]<sop>",),
        stop_words=("<|user|>", "<|observation|>"),
        efficient_eos=True,
        media=True,
    ),
    _add(
        "glm4_7",
        **_GLM4_MOE,
        prefix=("[gMASK]<sop>",),
        stop_words=("<|user|>", "<|observation|>"),
        efficient_eos=True,
        reasoning=True,
        empty_thought="</think>",
        thought_words=("<think>", "</think>"),
    ),
    _add(
        "glmz1",
        **_GLM4,
        prefix=("[gMASK]<sop>",),
        stop_words=("<|user|>", "<|observation|>"),
        efficient_eos=True,
        reasoning=True,
    ),
    _add(
        "gpt_oss",
        user=("<|start|>user<|message|>{{content}}<|end|><|start|>assistant",),
        system=("<|start|>system<|message|>{{content}}<|end|>",),
        default_system="You are ChatGPT, a large language model trained by OpenAI.",
        efficient_eos=True,
        reasoning=True,
        thought_words=("<|channel|>analysis<|message|>", "<|end|><|start|>assistant<|channel|>final<|message|>"),
    ),
    _add(
        "granite3",
        user=(
            (
                "<|start_of_role|>user<|end_of_role|>{{content}}<|end_of_text|>\n"
                "<|start_of_role|>assistant<|end_of_role|>"
            ),
        ),
        assistant=("{{content}}<|end_of_text|>\n",),
        system=("<|start_of_role|>system<|end_of_role|>{{content}}<|end_of_text|>\n",),
    ),
    _add(
        "granite3_vision",
        user=("<|user|>\n{{content}}\n<|assistant|>\n",),
        system=("<|system|>\n{{content}}\n",),
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the user's questions."
        ),
        media=True,
    ),
    _add(
        "granite4",
        user=(
            (
                "<|start_of_role|>user<|end_of_role|>{{content}}<|end_of_text|>\n"
                "<|start_of_role|>assistant<|end_of_role|>"
            ),
        ),
        assistant=("{{content}}<|end_of_text|>\n",),
        system=("<|start_of_role|>system<|end_of_role|>{{content}}<|end_of_text|>\n",),
        observation=("<|start_of_role|>tool<|end_of_role|>{{content}}<|end_of_text|>\n<|start_of_role|>assistant\n",),
        default_system="You are Granite, developed by IBM. You are a helpful AI assistant.",
        stop_words=("<|end_of_text|>",),
    ),
    _add("index", user=("reserved_0{{content}}reserved_1",), system=("<unk>{{content}}",), efficient_eos=True),
    _add(
        "hunyuan",
        user=("{{content}}<|extra_0|>",),
        assistant=("{{content}}<|eos|>",),
        system=("{{content}}<|extra_4|>",),
        prefix=("<|startoftext|>",),
        stop_words=("<|eos|>",),
    ),
    _add(
        "hunyuan_small",
        user=("<｜hy_User｜>{{content}}<｜hy_place▁holder▁no▁8｜>",),
        assistant=("{{content}}<｜hy_place▁holder▁no▁2｜>",),
        system=("{{content}}<｜hy_place▁holder▁no▁3｜>",),
        prefix=("<｜hy_begin▁of▁sentence｜>",),
        stop_words=("<｜hy_place▁holder▁no▁2｜>",),
    ),
    _add(
        "intern2",
        **_IM,
        prefix=(BOS,),
        default_system=(
            "You are an AI assistant whose name is InternLM (书生·浦语).\n- InternLM (书生·浦语) is a "
            "conversational language model that is developed by Shanghai AI Laboratory (上海人工智能实验室). It is "
            "designed to be helpful, honest, and harmless.\n- InternLM (书生·浦语) can understand and "
            "communicate fluently in the language chosen by the user such as English and 中文."
        ),
        stop_words=("<|im_end|>",),
    ),
    _add(
        "intern_vl",
        **_IM,
        prefix=(BOS,),
        default_system="你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
        stop_words=("<|im_end|>",),
        media=True,
    ),
    _add("intern_s1", **_IM, prefix=(BOS,), stop_words=("<|im_end|>",), media=True),
    _add("keye_vl", **_QWEN, stop_words=("<|im_end|>",), replace_eos=True, reasoning=True, media=True),
    _add(
        "kimi_vl",
        **_KIMI,
        default_system="You are a helpful assistant",
        stop_words=("<|im_end|>",),
        reasoning=True,
        thought_words=("◁think▷", "◁/think▷"),
        media=True,
    ),
    _add(
        "lfm2",
        **_LFM2,
        default_system="You are a helpful AI assistant.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        tool_call_words=("<|tool_call_start|>", "<|tool_call_end|>"),
    ),
    _add(
        "lfm2_vl",
        **_LFM2,
        default_system="You are a helpful multimodal assistant by Liquid AI.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        tool_call_words=("<|tool_call_start|>", "<|tool_call_end|>"),
        media=True,
    ),
    _add("llama2", **_LLAMA2, fuse_system=True),
    _add(
        "llama2_zh", **_LLAMA2, default_system="You are a helpful assistant. 你是一个乐于助人的助手。", fuse_system=True
    ),
    _add("llama3", **_LLAMA3, prefix=(BOS,), stop_words=("<|eot_id|>", "<|eom_id|>"), replace_eos=True),
    _add(
        "llama4",
        user=("<|header_start|>user<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n",),
        assistant=("{{content}}<|eot|>",),
        system=("<|header_start|>system<|header_end|>\n\n{{content}}<|eot|>",),
        function=("{{content}}<|eot|>",),
        observation=(
            "<|header_start|>ipython<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n",
        ),
        tools="llama3",
        prefix=(BOS,),
        stop_words=("<|eot|>", "<|eom|>"),
        replace_eos=True,
        media=True,
    ),
    _add("mllama", **_LLAMA3, prefix=(BOS,), stop_words=("<|eot_id|>", "<|eom_id|>"), replace_eos=True, media=True),
    _add(
        "moonlight",
        **_KIMI,
        default_system="You are a helpful assistant provided by Moonshot-AI.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
    ),
    _add(
        "llava",
        **_VICUNA,
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the user's questions."
        ),
        media=True,
    ),
    _add(
        "llava_next",
        **_VICUNA,
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the user's questions."
        ),
        media=True,
    ),
    _add(
        "llava_next_llama3",
        **_LLAMA3,
        prefix=(BOS,),
        stop_words=("<|eot_id|>", "<|eom_id|>"),
        replace_eos=True,
        media=True,
    ),
    _add("llava_next_mistral", **_MISTRAL, prefix=(BOS,), fuse_system=True, media=True),
    _add(
        "llava_next_qwen",
        **_QWEN,
        default_system="You are a helpful assistant.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        media=True,
    ),
    _add("llava_next_yi", **_IM, stop_words=("<|im_end|>",), media=True),
    _add(
        "llava_next_video",
        **_VICUNA,
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the user's questions."
        ),
        media=True,
    ),
    _add("llava_next_video_mistral", **_MISTRAL, prefix=(BOS,), fuse_system=True, media=True),
    _add("llava_next_video_yi", **_IM, stop_words=("<|im_end|>",), media=True),
    _add(
        "mimo",
        **_QWEN,
        default_system="You are a helpful assistant.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        reasoning=True,
    ),
    _add(
        "mimo_v2",
        **_QWEN,
        default_system="You are MiMo, a helpful AI assistant engineered by Xiaomi.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        reasoning=True,
        thought_words=("<think>", "</think>"),
    ),
    _add(
        "mimo_vl",
        **_QWEN,
        default_system="You are MiMo, an AI assistant developed by Xiaomi.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        reasoning=True,
        media=True,
    ),
    _add("minicpm_v", **_IM, default_system="You are a helpful assistant.", stop_words=("<|im_end|>",), media=True),
    _add("minicpm_v_4_6", **_IM, default_system="You are a helpful assistant.", stop_words=("<|im_end|>",), media=True),
    _add(
        "minicpm_o",
        **_IM,
        default_system="You are a helpful assistant. You can accept audio and text input and output voice and text.",
        stop_words=("<|im_end|>",),
        media=True,
    ),
    _add(
        "minimax1",
        user=(
            (
                "<beginning_of_sentence>user name=user\n{{content}}<end_of_sentence>\n"
                "<beginning_of_sentence>ai name=assistant\n"
            ),
        ),
        assistant=("{{content}}<end_of_sentence>\n",),
        system=("<beginning_of_sentence>system ai_setting=assistant\n{{content}}<end_of_sentence>\n",),
        function=("{{content}}<end_of_sentence>\n",),
        observation=(
            (
                "<beginning_of_sentence>tool name=tools\n{{content}}<end_of_sentence>\n"
                "<beginning_of_sentence>ai name=assistant\n"
            ),
        ),
        tools="minimax1",
        default_system="You are a helpful assistant.",
        stop_words=("<end_of_sentence>",),
    ),
    _add(
        "minimax2",
        user=("]~b]user\n{{content}}[e~[\n]~b]ai\n",),
        assistant=("{{content}}[e~[\n",),
        system=("]~!b[]~b]system\n{{content}}[e~[\n",),
        function=("{{content}}[e~[\n",),
        observation=("]~b]tool\n<response>{{content}}</response>[e~[\n]~b]ai\n",),
        tools="minimax2",
        default_system="You are a helpful assistant. Your name is MiniMax-M2.1 and is built by MiniMax.",
        stop_words=("[e~[",),
        reasoning=True,
    ),
    _add("ministral", **_MINISTRAL, prefix=(BOS,), fuse_system=True),
    _add("mistral", **_MISTRAL, prefix=(BOS,), fuse_system=True),
    _add(
        "mistral_small",
        user=("[INST]{{content}}[/INST]",),
        system=("[SYSTEM_PROMPT]{{content}}[/SYSTEM_PROMPT]",),
        function=("[TOOL_CALLS]{{content}}", EOS),
        observation=('[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]',),
        tools="mistral",
        prefix=(BOS,),
        media=True,
    ),
    _add("ministral3", **_MINISTRAL, prefix=(BOS,), fuse_system=True, media=True),
    _add("olmo", user=("<|user|>\n{{content}}<|assistant|>\n",), prefix=(EOS,)),
    _add("openchat", user=("GPT4 Correct User: {{content}}", EOS, "GPT4 Correct Assistant:"), prefix=(BOS,)),
    _add(
        "openchat-3.6",
        user=(
            (
                "<|start_header_id|>GPT4 Correct User<|end_header_id|>\n\n"
                "{{content}}<|eot_id|><|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\n"
            ),
        ),
        prefix=(BOS,),
        stop_words=("<|eot_id|>",),
    ),
    _add(
        "opencoder",
        **_CHATML,
        default_system="You are OpenCoder, created by OpenCoder Team.",
        stop_words=("<|im_end|>",),
    ),
    _add("paligemma", user=("{{content}}\n",), prefix=(BOS,), fuse_system=True, media=True),
    _add(
        "paligemma_chat",
        user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
        assistant=("{{content}}<end_of_turn>\n",),
        observation=("<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
        prefix=(BOS,),
        stop_words=("<end_of_turn>",),
        replace_eos=True,
        fuse_system=True,
        media=True,
    ),
    _add("phi", **_PHI, stop_words=("<|end|>",), replace_eos=True),
    # LLaMA-Factory declares an "<|endoftext|>" prefix in a form its encoder skips: no prefix is encoded.
    _add("phi_small", **_PHI, stop_words=("<|end|>",), replace_eos=True),
    _add(
        "phi4",
        user=("<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",),
        assistant=("{{content}}<|im_end|>",),
        system=("<|im_start|>system<|im_sep|>{{content}}<|im_end|>",),
        stop_words=("<|im_end|>",),
        replace_eos=True,
    ),
    _add(
        "phi4_mini",
        user=("<|user|>{{content}}<|end|><|assistant|>",),
        assistant=("{{content}}<|end|>",),
        system=("<|system|>{{content}}<|end|>",),
        tools_wrap="<|tool|>{{content}}<|/tool|>",
        stop_words=("<|end|>",),
        replace_eos=True,
    ),
    _add("pixtral", **_MINISTRAL, prefix=(BOS,), fuse_system=True, media=True),
    _add(
        "qwen",
        **_QWEN,
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
    ),
    _add("qwen3", **_QWEN, stop_words=("<|im_end|>",), replace_eos=True, reasoning=True),
    _add("qwen3_nothink", **_QWEN, stop_words=("<|im_end|>",), replace_eos=True),
    _add(
        "qwen2_audio",
        **_IM,
        default_system="You are a helpful assistant.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        media=True,
    ),
    _add(
        "qwen2_omni",
        **_QWEN,
        default_system="You are a helpful assistant.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        media=True,
    ),
    _add("qwen3_omni", **_QWEN, stop_words=("<|im_end|>",), replace_eos=True, reasoning=True, media=True),
    _add("qwen3_omni_nothink", **_QWEN, stop_words=("<|im_end|>",), replace_eos=True, media=True),
    _add(
        "qwen2_vl",
        **_QWEN,
        default_system="You are a helpful assistant.",
        stop_words=("<|im_end|>",),
        replace_eos=True,
        media=True,
    ),
    _add("qwen3_vl", **_QWEN, stop_words=("<|im_end|>",), replace_eos=True, reasoning=True, media=True),
    _add("qwen3_vl_nothink", **_QWEN, stop_words=("<|im_end|>",), replace_eos=True, media=True),
    _add("qwen3_5", **_QWEN3_5, stop_words=("<|im_end|>",), replace_eos=True, reasoning=True, media=True),
    _add("qwen3_5_nothink", **_QWEN3_5, stop_words=("<|im_end|>",), replace_eos=True, media=True),
    _add("qwen3_6", **_QWEN3_5, stop_words=("<|im_end|>",), replace_eos=True, reasoning=True, media=True),
    _add(
        "sailor",
        user=("<|im_start|>question\n{{content}}<|im_end|>\n<|im_start|>answer\n",),
        assistant=("{{content}}<|im_end|>\n",),
        system=("<|im_start|>system\n{{content}}<|im_end|>\n",),
        default_system=(
            "You are an AI assistant named Sailor created by Sea AI Lab. Your answer should be friendly, "
            "unbiased, faithful, informative and detailed."
        ),
        stop_words=("<|im_end|>",),
    ),
    _add(
        "seed_coder",
        user=(BOS, "user\n{{content}}", EOS, BOS, "assistant\n"),
        system=(BOS, "system\n{{content}}", EOS),
        default_system=(
            "You are an AI programming assistant, utilizing the Seed-Coder model, developed by ByteDance "
            "Seed, and you only answer questions related to computer science. For politically sensitive "
            "questions, security and privacy issues, and other non-computer science questions, you will "
            "refuse to answer.\n\n"
        ),
    ),
    _add(
        "seed_oss",
        user=(BOS, "user\n{{content}}", EOS, BOS, "assistant\n"),
        system=(BOS, "system\n{{content}}", EOS),
        function=(BOS, "\n{{content}}", EOS),
        tools="seed_oss",
        reasoning=True,
        thought_words=("<seed:think>", "</seed:think>"),
    ),
    _add("smollm", **_IM, stop_words=("<|im_end|>",)),
    _add(
        "smollm2",
        **_IM,
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
        stop_words=("<|im_end|>",),
    ),
    _add(
        "solar",
        user=("### User:\n{{content}}\n\n### Assistant:\n",),
        system=("### System:\n{{content}}\n\n",),
        efficient_eos=True,
    ),
    _add(
        "starchat",
        user=("<|user|>\n{{content}}<|end|>\n<|assistant|>",),
        assistant=("{{content}}<|end|>\n",),
        system=("<|system|>\n{{content}}<|end|>\n",),
        stop_words=("<|end|>",),
    ),
    _add(
        "telechat2",
        user=("<_user>{{content}}<_bot>",),
        system=("<_system>{{content}}",),
        default_system="你是中国电信星辰语义大模型，英文名是TeleChat，你是由中电信人工智能科技有限公司和中国电信人工智能研究院（TeleAI）研发的人工智能助手。",
    ),
    _add(
        "vicuna",
        **_VICUNA,
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the user's questions."
        ),
    ),
    _add(
        "video_llava",
        **_VICUNA,
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the user's questions."
        ),
        media=True,
    ),
    _add(
        "xuanyuan",
        user=("Human: {{content}} Assistant:",),
        default_system="以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与与不道德、不安全、有争议、政治敏感等相关的话题、问题和指示。\n",
    ),
    _add("yi", **_IM, stop_words=("<|im_end|>",)),
    _add(
        "yi_vl",
        user=("### Human: {{content}}\n### Assistant:",),
        assistant=("{{content}}\n",),
        default_system=(
            "This is a chat between an inquisitive human and an AI assistant. Assume the role of the AI "
            "assistant. Read all the images carefully, and respond to the human's questions with "
            "informative, helpful, detailed and polite answers. "
            "这是一个好奇的人类和一个人工智能助手之间的对话。假设你扮演这个AI助手的角色。仔细阅读所有的图像，并对人类的问题做出信息丰富、有帮助、详细的和礼貌的回答。\n\n"
        ),
        stop_words=("###",),
        efficient_eos=True,
        media=True,
    ),
    _add(
        "youtu",
        user=("<|User|>{{content}}<|Assistant|>",),
        assistant=("{{content}}<|end_of_text|>",),
        function=("{{content}}",),
        observation=("<tool_response>\n{{content}}\n</tool_response><|Assistant|>",),
        prefix=(BOS,),
        stop_words=("<|end_of_text|>",),
        replace_eos=True,
        reasoning=True,
    ),
    _add(
        "youtu_vl",
        user=("<|begin_of_text|>user\n{{content}}<|end_of_text|>\n<|begin_of_text|>assistant\n",),
        assistant=("{{content}}<|end_of_text|>\n",),
        system=("<|begin_of_text|>system\n{{content}}<|end_of_text|>\n",),
        default_system="You are a helpful assistant.",
        stop_words=("<|end_of_text|>",),
        media=True,
    ),
    _add("yuan", user=("{{content}}", Token("<sep>")), assistant=("{{content}}<eod>\n",), stop_words=("<eod>",)),
    _add(
        "zephyr",
        user=("<|user|>\n{{content}}", EOS, "<|assistant|>\n"),
        system=("<|system|>\n{{content}}", EOS),
        default_system="You are Zephyr, a helpful assistant.",
    ),
    _add(
        "aeva",
        **_GLM4_MOE,
        prefix=("[gMASK]<sop>",),
        default_system=(
            "You are an AI assistant named Aeva created by Zongzhi Lou. Your answer should be friendly, "
            "unbiased, faithful, informative and detailed."
        ),
        stop_words=("<|user|>", "<|observation|>"),
        efficient_eos=True,
        reasoning=True,
        empty_thought="</think>",
        thought_words=("<think>", "</think>"),
    ),
    _add("baichuan2", user=("<reserved_106>{{content}}<reserved_107>",), efficient_eos=True),
)
