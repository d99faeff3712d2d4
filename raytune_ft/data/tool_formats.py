"""How tool definitions and tool calls are written into prompts, one entry per LLaMA-Factory ``tool_format``.

A row's ``tools`` (JSON tool definitions) become text appended to the system message, and each
function-call turn (JSON ``{"name", "arguments"}`` objects) becomes the text the model learns to emit.
Every format reproduces LLaMA-Factory's text character for character (tests/unit/test_templates_golden.py
holds them to LLaMA-Factory's own output), because a model fine-tuned on one wording calls tools in that
wording. Only rendering lives here: reading calls back out of generated text is the server's business.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["TOOL_FORMATS", "ToolCall", "ToolFormat", "today"]

ToolCall = tuple[str, str]
"""One call: the function name and its arguments as JSON text."""
Tools = list[dict[str, Any]]


@dataclass(frozen=True)
class ToolFormat:
    """A tool-calling prompt format."""

    describe: Callable[[Tools], str]
    """The tool definitions as text (appended to the system message)."""
    call: Callable[[list[ToolCall]], str]
    """A function-call turn's calls as text."""


def today() -> str:
    """The date Llama 3's tool prompt states (a function, so tests can freeze it)."""
    return datetime.now().strftime("%d %b %Y")


def _dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _function(tool: dict[str, Any]) -> Any:
    """The function object of an OpenAI-style ``{"type": "function", "function": {...}}`` tool, or the tool."""
    return tool.get("function", tool) if tool.get("type") == "function" else tool


def _wrapped(tool: dict[str, Any]) -> dict[str, Any]:
    """The tool in OpenAI's ``{"type": "function", "function": {...}}`` wrapping."""
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else _dumps(value)


def _arguments(call: ToolCall) -> dict[str, Any]:
    arguments: dict[str, Any] = json.loads(call[1])
    return arguments


# --- default (ReAct-style "Action:" lines) --------------------------------------------------------


def _default_describe(tools: Tools) -> str:
    tool_text = ""
    for tool in tools:
        tool = tool.get("function", "") if tool.get("type") == "function" else tool
        args = ""
        for name, param in tool["parameters"]["properties"].items():
            required = ", required" if name in tool["parameters"].get("required", []) else ""
            enum = f", should be one of [{', '.join(param['enum'])}]" if param.get("enum", None) else ""
            items = f", where each item should be {param['items'].get('type', '')}" if param.get("items", None) else ""
            args += f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}{enum}{items}\n"
        tool_text += (
            f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{args}\n"
        )
    names = ", ".join(tool["name"] for tool in map(_default_unwrapped, tools))
    return (
        f"You have access to the following tools:\n{tool_text}Use the following format if using a tool:\n```\n"
        f"Action: tool name (one of [{names}])\nAction Input: the input to the tool, in a JSON format representing "
        'the kwargs (e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
    )


def _default_unwrapped(tool: dict[str, Any]) -> Any:
    return tool.get("function", "") if tool.get("type") == "function" else tool


def _default_call(calls: list[ToolCall]) -> str:
    return "\n".join(f"Action: {name}\nAction Input: {arguments}" for name, arguments in calls)


# --- JSON and XML styles --------------------------------------------------------------------------


def _glm4_describe(tools: Tools) -> str:
    tool_text = "".join(
        f"\n\n## {tool['name']}\n\n{_dumps(tool, indent=4)}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"  # noqa: RUF001
        for tool in map(_default_unwrapped, tools)
    )
    return (
        "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"  # noqa: RUF001
        f"你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
    )


def _glm4_call(calls: list[ToolCall]) -> str:
    if len(calls) > 1:
        raise ValueError("the glm4 tool format has no parallel calls: one function per function-call turn")
    return f"{calls[0][0]}\n{calls[0][1]}"


def _llama3_describe(tools: Tools) -> str:
    tool_text = "".join(_dumps(_wrapped(tool), indent=4) + "\n\n" for tool in tools)
    return (
        f"Cutting Knowledge Date: December 2023\nToday Date: {today()}\n\nYou have access to the following "
        "functions. To call a function, please respond with JSON for a function call. Respond in the format "
        '{"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.'
        f"\n\n{tool_text}"
    )


def _llama3_call(calls: list[ToolCall]) -> str:
    objects = [{"name": name, "parameters": json.loads(arguments)} for name, arguments in calls]
    return _dumps(objects[0] if len(objects) == 1 else objects)


def _mistral_describe(tools: Tools) -> str:
    return "[AVAILABLE_TOOLS] " + _dumps([_wrapped(tool) for tool in tools]) + "[/AVAILABLE_TOOLS]"


def _mistral_call(calls: list[ToolCall]) -> str:
    return _dumps([{"name": name, "arguments": json.loads(arguments)} for name, arguments in calls])


_QWEN_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\nFor each function call, "
    "return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def _qwen_describe(tools: Tools) -> str:
    return "\n\n" + _QWEN_TOOLS.format(tools="".join("\n" + _dumps(_wrapped(tool)) for tool in tools))


def _qwen_call(calls: list[ToolCall]) -> str:
    return "\n".join(
        f"<tool_call>\n{_dumps({'name': name, 'arguments': json.loads(arguments)})}\n</tool_call>"
        for name, arguments in calls
    )


def _ling_describe(tools: Tools) -> str:
    return _QWEN_TOOLS.format(tools="".join("\n" + _dumps(_wrapped(tool)) for tool in tools)) + (
        "\ndetailed thinking off"
    )


def _qwen3_5_describe(tools: Tools) -> str:
    tool_text = "".join("\n" + _dumps(_function(tool)) for tool in tools)
    return (
        f"\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>{tool_text}\n</tools>\n\n"
        "If you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n"
        "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
        "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
        "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the "
        "specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> "
        "XML tags\n- Required parameters MUST be specified\n- You may provide optional reasoning for your function "
        "call in natural language BEFORE the function call, but NOT after\n- If there is no function call "
        "available, answer the question like normal with your current knowledge and do not tell the user about "
        "function calls\n</IMPORTANT>"
    )


def _qwen3_5_call(calls: list[ToolCall]) -> str:
    texts = []
    for call in calls:
        parameters = "".join(f"\n<parameter={k}>\n{_value_text(v)}\n</parameter>" for k, v in _arguments(call).items())
        texts.append(f"<tool_call>\n<function={call[0]}>{parameters}\n</function>\n</tool_call>")
    return "\n".join(texts)


def _glm4_moe_describe(tools: Tools) -> str:
    tool_text = "".join("\n" + _dumps(_wrapped(tool)) for tool in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
        f"function signatures within <tools></tools> XML tags:\n<tools>{tool_text}\n</tools>\n\nFor each function "
        "call, output the function name and arguments within the following XML format:\n<tool_call>{function-name}"
        "\n<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n<arg_key>{arg-key-2}</arg_key>"
        "\n<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>\n"
    )


def _glm4_moe_call(calls: list[ToolCall]) -> str:
    return "\n".join(
        f"\n<tool_call>{call[0]}"
        + "".join(
            f"\n<arg_key>{k}</arg_key>\n<arg_value>{_value_text(v)}</arg_value>" for k, v in _arguments(call).items()
        )
        for call in calls
    )


def _minimax1_describe(tools: Tools) -> str:
    tool_text = "".join(_dumps(_default_unwrapped(tool)) + "\n" for tool in tools)
    return (
        f"You are provided with these tools:\n<tools>\n{tool_text}</tools>\n\nIf you need to call tools, please "
        "respond with <tool_calls></tool_calls> XML tags, and provide tool-name and json-object of arguments, "
        'following the format below:\n<tool_calls>\n{"name": <tool-name-1>, "arguments": <args-json-object-1>}'
        "\n...\n</tool_calls>"
    )


def _minimax1_call(calls: list[ToolCall]) -> str:
    lines = [_dumps({"name": call[0], "arguments": _arguments(call)}) for call in calls]
    return "<tool_calls>\n" + "\n".join(lines) + "\n</tool_calls>"


def _minimax2_describe(tools: Tools) -> str:
    tool_text = "".join("<tool>" + _dumps(_default_unwrapped(tool)) + "</tool>\n" for tool in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more tools to assist with the user query.\nHere are the tools available "
        f"in JSONSchema format:\n\n<tools>\n{tool_text}</tools>\n\nWhen making tool calls, use XML format to invoke "
        'tools and pass parameters:\n\n<minimax:tool_call>\n<invoke name="tool-name-1">\n<parameter '
        'name="param-key-1">param-value-1</parameter>\n<parameter name="param-key-2">param-value-2</parameter>\n'
        "...\n</invoke>\n</minimax:tool_call>"
    )


def _minimax2_call(calls: list[ToolCall]) -> str:
    return "\n".join(
        f'<invoke name="{call[0]}">'
        + "".join(f'\n<parameter name="{k}">{_value_text(v)}</parameter>' for k, v in _arguments(call).items())
        + "\n</invoke>"
        for call in calls
    )


def _seed_oss_describe(tools: Tools) -> str:
    return (
        "system\nYou are Doubao, a helpful AI assistant. You may call one or more functions to assist with the "
        "user query.Tool List:\nYou are authorized to use the following tools (described in JSON Schema format). "
        "Before performing any task, you must decide how to call them based on the descriptions and parameters of "
        f"these tools.\n{_dumps(tools)}\n工具调用请遵循如下格式:\n<seed:tool_call>\n<function=example_function_name>\n"
        "<parameter=example_parameter_1>value_1</parameter>\n<parameter=example_parameter_2>This is the value for "
        "the second parameter\nthat can span\nmultiple lines</parameter>\n</function>\n</seed:tool_call>\n"
    )


def _seed_oss_call(calls: list[ToolCall]) -> str:
    return "\n".join(
        f"\n<seed:tool_call>\n<function={call[0]}"
        + "".join(f"\n<parameter={k}>{_value_text(v)}</parameter>" for k, v in _arguments(call).items())
        + "\n</function>\n</seed:tool_call>"
        for call in calls
    )


def _lfm2_describe(tools: Tools) -> str:
    return f"List of tools: <|tool_list_start|>{_dumps([_function(tool) for tool in tools])}<|tool_list_end|>"


def _lfm2_call(calls: list[ToolCall]) -> str:
    texts = []
    for call in calls:
        keywords = [f'{k}="{v}"' if isinstance(v, str) else f"{k}={_dumps(v)}" for k, v in _arguments(call).items()]
        texts.append(f"{call[0]}({', '.join(keywords)})")
    return f"<|tool_call_start|>[{', '.join(texts)}]<|tool_call_end|>"


# --- Gemma 4 (its own quoted-literal syntax) ------------------------------------------------------

_Q = '<|"|>'  # Gemma 4's string quote


def _gemma4_properties(properties: dict[str, Any]) -> str:
    parts = []
    for name, schema in properties.items():
        items = []
        if schema.get("description"):
            items.append(f"description:{_Q}{schema['description']}{_Q}")
        if schema.get("type"):
            items.append(f"type:{_Q}{str(schema['type']).upper()}{_Q}")
        parts.append(f"{name}:{{{','.join(items)}}}")
    return ",".join(parts)


def _gemma4_declaration(tool: dict[str, Any]) -> str:
    function = _function(tool)
    text = f"declaration:{function['name']}{{description:{_Q}{function.get('description', '')}{_Q}"
    parameters = function.get("parameters")
    if parameters:
        parts = []
        if parameters.get("properties"):
            parts.append(f"properties:{{{_gemma4_properties(parameters['properties'])}}}")
        if parameters.get("required"):
            parts.append("required:[" + ",".join(f"{_Q}{item}{_Q}" for item in parameters["required"]) + "]")
        if parameters.get("type"):
            parts.append(f"type:{_Q}{str(parameters['type']).upper()}{_Q}")
        text += f",parameters:{{{','.join(parts)}}}"
    response = function.get("response")
    if response:
        parts = [f"description:{_Q}{response['description']}{_Q}"] if response.get("description") else []
        if str(response.get("type", "")).upper() == "OBJECT":
            parts.append(f"type:{_Q}OBJECT{_Q}")
        text += f",response:{{{','.join(parts)}}}"
    return text + "}"


def _gemma4_describe(tools: Tools) -> str:
    return "\n".join(_gemma4_declaration(tool) for tool in tools)


def _gemma4_value(value: Any, quote_keys: bool = True) -> str:
    if isinstance(value, str):
        return f"{_Q}{value}{_Q}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        items = [
            f"{f'{_Q}{key}{_Q}' if quote_keys else key}:{_gemma4_value(value[key], quote_keys)}"
            for key in sorted(value)
        ]
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_gemma4_value(item, quote_keys) for item in value) + "]"
    return "null" if value is None else str(value)


def _gemma4_call(calls: list[ToolCall]) -> str:
    texts = []
    for name, arguments in calls:
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = arguments
        if isinstance(parsed, dict):
            body = ",".join(f"{key}:{_gemma4_value(parsed[key], quote_keys=False)}" for key in sorted(parsed))
        elif isinstance(parsed, str):
            body = parsed
        else:
            body = _gemma4_value(parsed, quote_keys=False)
        texts.append(f"<|tool_call>call:{name}{{{body}}}<tool_call|>")
    return "".join(texts)


TOOL_FORMATS: dict[str, ToolFormat] = {
    "default": ToolFormat(_default_describe, _default_call),
    "gemma4": ToolFormat(_gemma4_describe, _gemma4_call),
    "glm4": ToolFormat(_glm4_describe, _glm4_call),
    "glm4_moe": ToolFormat(_glm4_moe_describe, _glm4_moe_call),
    "lfm2": ToolFormat(_lfm2_describe, _lfm2_call),
    "ling": ToolFormat(_ling_describe, _qwen_call),
    "llama3": ToolFormat(_llama3_describe, _llama3_call),
    "minimax1": ToolFormat(_minimax1_describe, _minimax1_call),
    "minimax2": ToolFormat(_minimax2_describe, _minimax2_call),
    "mistral": ToolFormat(_mistral_describe, _mistral_call),
    "qwen": ToolFormat(_qwen_describe, _qwen_call),
    "qwen3_5": ToolFormat(_qwen3_5_describe, _qwen3_5_call),
    "seed_oss": ToolFormat(_seed_oss_describe, _seed_oss_call),
}
"""Tool formats by LLaMA-Factory's ``tool_format`` name."""
