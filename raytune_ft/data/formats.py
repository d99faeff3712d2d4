"""Normalise source rows into the canonical row of each training stage.

sft ``{"messages"}``, pt ``{"text"}``, preference ``{"messages", "chosen", "rejected"}`` and kto
``{"messages", "label"}``. Registry datasets say their format (LLaMA-Factory's alpaca, sharegpt or
openai, with column and tag mappings, read as its converters read them); for bundled data and plain
files, alpaca rows and rows holding ``messages`` (or ``prompt`` for preference pairs) are recognised
per row. ``{{key}}`` placeholders are filled here, once, so every later stage sees final text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .media import row_media
from .sources import DataError, DatasetSource

__all__ = ["fill_placeholders", "normalize_example", "normalize_row"]

Message = dict[str, str]
Pair = tuple[list[Message], str, str]
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_ALPACA = {"prompt": "instruction", "query": "input", "response": "output", "history": "history", "system": "system"}
_SHAREGPT_TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "system_tag": "system", "observation_tag": "observation", "function_tag": "function_call",
}  # fmt: skip
_OPENAI_TAGS = {
    **_SHAREGPT_TAGS, "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
    "observation_tag": "tool",
}  # fmt: skip
_LAST_TURN = {
    "assistant": "the conversation must end with an assistant message (or a function call) to learn from",
    "user": "the prompt must end with a user message (chosen and rejected are the replies to it), or a tool result",
}
_LAST_ROLES = {"assistant": ("assistant", "function"), "user": ("user", "observation")}
# Plain ``messages`` rows: OpenAI's roles, and the canonical function / observation roles as they are.
_PLAIN_TAGS = {**_OPENAI_TAGS, "function_tag": "function", "observation_tag": "observation"}
_PLAIN_ROLES = {"tool": "observation", "function_call": "function"}


def fill_placeholders(text: str, values: Mapping[str, str], where: str) -> str:
    """Replace ``{{key}}`` with ``values[key]``; an unknown key is an error naming ``where``."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise DataError(f"{where}: placeholder {{{{{key}}}}} has no value; set data.placeholders.{key}")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def normalize_example(
    row: Mapping[str, Any],
    stage: str,
    placeholders: Mapping[str, str],
    where: str,
    source: DatasetSource | None = None,
) -> dict[str, Any]:
    """The canonical row of ``stage`` (sft, pt, preference or kto) for one source row."""
    normalize = _STAGES.get(stage)
    if normalize is None:
        raise DataError(f"{where}: stage {stage!r} has no row format; use one of {', '.join(_STAGES)}")
    example = normalize(row, placeholders, where, source)
    if stage == "pt":
        texts = [example["text"]]
    else:
        texts = [m["content"] for m in example["messages"]]
        texts += [example[k] for k in ("chosen", "rejected") if k in example]
    return {**example, **row_media(row, texts, where, source)}


def normalize_row(
    row: Mapping[str, Any], placeholders: Mapping[str, str], where: str, source: DatasetSource | None = None
) -> list[Message]:
    """Canonical messages for one row; ``where`` names it in errors, ``source`` gives its format."""
    formatting = source.formatting if source else None
    if formatting == "alpaca":
        messages = _from_alpaca(row, where, {**_ALPACA, **(source.columns if source else {})})
    elif formatting in ("sharegpt", "openai"):
        messages = _from_sharegpt(row, where, source)  # type: ignore[arg-type]
    elif "messages" in row and row["messages"] is not None:
        messages = _from_messages(row["messages"], where)
    elif "instruction" in row and "output" in row:
        messages = _from_alpaca(row, where, _ALPACA)
    else:
        raise DataError(
            f"{where}: row has neither 'messages' nor alpaca 'instruction'/'output' columns (found: {_found(row)})"
        )
    _check_order(messages, where)
    return _filled(messages, placeholders, where)


# --- stages -------------------------------------------------------------------------------------


def _sft_example(
    row: Mapping[str, Any], placeholders: Mapping[str, str], where: str, source: DatasetSource | None
) -> dict[str, Any]:
    return {"messages": normalize_row(row, placeholders, where, source), **_tools(row, where, source)}


def _pt_example(
    row: Mapping[str, Any], placeholders: Mapping[str, str], where: str, source: DatasetSource | None
) -> dict[str, Any]:
    # LLaMA-Factory's pt entries map the text with "columns": {"prompt": "text"}.
    column = source.columns.get("prompt", "text") if source else "text"
    if column not in row:
        raise DataError(
            f"{where}: missing column {column!r} holding the pre-training text; found: {_found(row)} "
            '(map yours with "columns": {"prompt": ...} in dataset_info.json)'
        )
    text = row[column]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: column {column!r} must be non-empty text, got {_kind(text)}")
    # Raw corpora are taken verbatim: "{{...}}" in code or wiki text is not a placeholder.
    return {"text": text}


def _preference_example(
    row: Mapping[str, Any], placeholders: Mapping[str, str], where: str, source: DatasetSource | None
) -> dict[str, Any]:
    read = _PAIR_READERS.get(source.formatting if source else None, _plain_pair)
    prompt, chosen, rejected = read(row, where, source)
    _check_order(prompt, where, last="user")
    chosen, rejected = (fill_placeholders(text, placeholders, where) for text in (chosen, rejected))
    _check_pair(chosen, rejected, where, _pair_columns(source))
    prompt = _filled(prompt, placeholders, where)
    return {"messages": prompt, "chosen": chosen, "rejected": rejected, **_tools(row, where, source)}


def _kto_example(
    row: Mapping[str, Any], placeholders: Mapping[str, str], where: str, source: DatasetSource | None
) -> dict[str, Any]:
    column = source.columns.get("kto_tag", "label") if source else "label"
    label = row.get(column)
    if not isinstance(label, bool):
        raise DataError(
            f"{where}: column {column!r} must hold the KTO label, true (desirable) or false (undesirable); "
            f"got {_kind(label)}{'' if column in row else f' (found: {_found(row)})'}"
        )
    messages = normalize_row(row, placeholders, where, source)
    return {"messages": messages, "label": label, **_tools(row, where, source)}


def _prompt_example(
    row: Mapping[str, Any], placeholders: Mapping[str, str], where: str, source: DatasetSource | None
) -> dict[str, Any]:
    """An online-RL row: the conversation without its last answer, and the ground truth the rewards check:
    the ``answer`` column (mapped as ``columns: {answer: ...}``), else the left-out answer. A plain row may
    instead give ``prompt`` (text or messages) and ``answer``, as TRL's prompt datasets do."""
    column = source.columns.get("answer", "answer") if source else "answer"
    left_out = None
    if (source is None or source.formatting is None) and "prompt" in row and "messages" not in row:
        raw = row["prompt"]
        prompt = [{"role": "user", "content": raw}] if isinstance(raw, str) else _from_messages(raw, where, "prompt")
        prompt = _filled(prompt, placeholders, where)
    else:
        prompt = normalize_row(row, placeholders, where, source)
        if prompt[-1]["role"] == "assistant":
            prompt, left_out = prompt[:-1], prompt[-1]["content"]
    _check_order(prompt, where, last="user")
    answer = row.get(column, left_out)
    if not isinstance(answer, str | int | float) or isinstance(answer, bool) or not str(answer).strip():
        raise DataError(
            f"{where}: an online-RL row needs its ground truth: a non-empty {column!r} column or a final answer "
            f"turn; found: {_found(row)}"
        )
    return {"messages": prompt, "answer": str(answer), **_tools(row, where, source)}


_STAGES: dict[str, Callable[[Mapping[str, Any], Mapping[str, str], str, DatasetSource | None], dict[str, Any]]] = {
    "sft": _sft_example,
    "pt": _pt_example,
    "preference": _preference_example,
    "kto": _kto_example,
    "prompt": _prompt_example,
}


# --- preference pairs ---------------------------------------------------------------------------


def _pair_columns(source: DatasetSource | None) -> tuple[str, str]:
    columns = source.columns if source else {}
    return columns.get("chosen", "chosen"), columns.get("rejected", "rejected")


def _alpaca_pair(row: Mapping[str, Any], where: str, source: DatasetSource | None) -> Pair:
    columns = {**_ALPACA, **(source.columns if source else {})}
    _require(row, where, columns, ("prompt",))
    chosen, rejected = _pair_columns(source)
    return _alpaca_prompt(row, where, columns), _reply_text(row, chosen, where), _reply_text(row, rejected, where)


def _sharegpt_pair(row: Mapping[str, Any], where: str, source: DatasetSource | None) -> Pair:
    assert source is not None  # only sources with a sharegpt/openai formatting are read this way
    tags = _tags(source)
    chosen, rejected = _pair_columns(source)
    prompt = _from_sharegpt(row, where, source)
    return prompt, _reply_turn(row, chosen, tags, where), _reply_turn(row, rejected, tags, where)


def _plain_pair(row: Mapping[str, Any], where: str, source: DatasetSource | None) -> Pair:
    chosen, rejected = _pair_columns(source)
    if "prompt" in row:
        raw = row["prompt"]
        prompt = [{"role": "user", "content": raw}] if isinstance(raw, str) else _from_messages(raw, where, "prompt")
    elif row.get("messages") is not None:
        prompt = _from_messages(row["messages"], where)
    elif "instruction" in row:
        prompt = _alpaca_prompt(row, where, _ALPACA)
    else:
        raise DataError(
            f"{where}: a preference row needs 'prompt' (text or messages), 'messages' or alpaca 'instruction', "
            f"plus {chosen!r} and {rejected!r}; found: {_found(row)}"
        )
    return prompt, _reply_text(row, chosen, where), _reply_text(row, rejected, where)


_PAIR_READERS: dict[str | None, Callable[[Mapping[str, Any], str, DatasetSource | None], Pair]] = {
    "alpaca": _alpaca_pair,
    "sharegpt": _sharegpt_pair,
    "openai": _sharegpt_pair,
    None: _plain_pair,
}


def _reply_text(row: Mapping[str, Any], column: str, where: str) -> str:
    if column not in row:
        raise DataError(f"{where}: missing column {column!r} (a reply of the preference pair); found: {_found(row)}")
    value = row[column]
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be the reply text (a string), got {_kind(value)}")
    return value


def _reply_turn(row: Mapping[str, Any], column: str, tags: Mapping[str, str], where: str) -> str:
    turn = row.get(column)
    example = f"{{{tags['role_tag']!r}: {tags['assistant_tag']!r}, {tags['content_tag']!r}: '...'}}"
    if not isinstance(turn, Mapping):
        found = "" if column in row else f" (found: {_found(row)})"
        raise DataError(
            f"{where}: column {column!r} must hold one reply turn such as {example}, got {_kind(turn)}{found}"
        )
    message = _turn(turn, f"column {column!r}", tags, where)
    if message["role"] != "assistant":
        raise DataError(f"{where}: column {column!r} must be an assistant turn such as {example}")
    return message["content"]


def _check_pair(chosen: str, rejected: str, where: str, columns: tuple[str, str]) -> None:
    for column, text in zip(columns, (chosen, rejected), strict=True):
        if not text.strip():
            raise DataError(f"{where}: column {column!r} is empty; both replies of a preference pair need text")
    if chosen == rejected:
        raise DataError(
            f"{where}: columns {columns[0]!r} and {columns[1]!r} hold the same reply; a pair teaches nothing "
            "unless they differ (drop the row)"
        )


# --- source formats -----------------------------------------------------------------------------


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: column {key!r} must be a string, got {type(value).__name__}")
    return value


def _require(row: Mapping[str, Any], where: str, columns: Mapping[str, str], keys: tuple[str, ...]) -> None:
    for key in keys:
        if columns[key] not in row:
            raise DataError(
                f"{where}: missing column {columns[key]!r} (the alpaca {key!r} column); found: {_found(row)}"
            )


def _from_alpaca(row: Mapping[str, Any], where: str, columns: Mapping[str, str]) -> list[Message]:
    _require(row, where, columns, ("prompt", "response"))
    prompt = _alpaca_prompt(row, where, columns)
    return [*prompt, {"role": "assistant", "content": _text(row, columns["response"], where)}]


def _alpaca_prompt(row: Mapping[str, Any], where: str, columns: Mapping[str, str]) -> list[Message]:
    """System, history pairs and the ``prompt\\nquery`` user turn, as LLaMA-Factory joins them."""
    messages: list[Message] = []
    system = _text(row, columns["system"], where)
    if system:
        messages.append({"role": "system", "content": system})
    for pair in row.get(columns["history"]) or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{where}: {columns['history']!r} must be a list of [prompt, response] pairs")
        messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
    prompt = "\n".join(p for p in (_text(row, columns["prompt"], where), _text(row, columns["query"], where)) if p)
    return [*messages, {"role": "user", "content": prompt}]


def _tags(source: DatasetSource) -> dict[str, str]:
    return {**(_OPENAI_TAGS if source.formatting == "openai" else _SHAREGPT_TAGS), **source.tags}


def _from_sharegpt(row: Mapping[str, Any], where: str, source: DatasetSource) -> list[Message]:
    tags = _tags(source)
    column = source.columns.get("messages", "messages" if source.formatting == "openai" else "conversations")
    turns = row.get(column)
    if not isinstance(turns, (list, tuple)):
        raise DataError(f"{where}: column {column!r} must hold the list of turns; found: {_found(row)}")
    messages = (
        _openai_turns(turns, tags, where) if source.formatting == "openai" else
        [_turn(turn, f"turn {i}", tags, where) for i, turn in enumerate(turns)]
    )  # fmt: skip
    if messages and messages[0]["role"] == "system":  # a leading system turn wins over the system column
        return messages
    system = _text(row, source.columns.get("system", "system"), where)
    return ([{"role": "system", "content": system}] if system else []) + messages


def _turn(turn: Any, label: str, tags: Mapping[str, str], where: str) -> Message:
    roles = {
        tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system",
        tags["function_tag"]: "function", tags["observation_tag"]: "observation",
    }  # fmt: skip
    role = turn.get(tags["role_tag"]) if isinstance(turn, Mapping) else None
    content = turn.get(tags["content_tag"]) if isinstance(turn, Mapping) else None
    if role not in roles or not isinstance(content, str):
        raise DataError(
            f"{where}: {label} needs {tags['role_tag']!r} in {sorted(roles)} and a string "
            f"{tags['content_tag']!r}; got {dict(turn) if isinstance(turn, Mapping) else turn!r}"
        )
    return {"role": roles[role], "content": content}


def _openai_turns(turns: Sequence[Any], tags: Mapping[str, str], where: str) -> list[Message]:
    """OpenAI-style turns as LLaMA-Factory reads them: an assistant turn's ``tool_calls`` become a
    function-call turn (the list of their ``function`` objects as JSON), and consecutive tool results
    become one observation turn (joined by ``</tool_response>`` / ``<tool_response>`` lines)."""
    messages: list[Message] = []
    results: list[str] = []
    for i, turn in enumerate(turns):
        calls = turn.get("tool_calls") if isinstance(turn, Mapping) else None
        if calls and turn.get(tags["role_tag"]) in (tags["assistant_tag"], tags["function_tag"]):
            turn = {tags["role_tag"]: tags["function_tag"], tags["content_tag"]: _calls_json(calls, i, where)}
        message = _turn(turn, f"turn {i}", tags, where)
        if message["role"] == "observation":
            results.append(message["content"])
            continue
        messages += [*_observation(results), message]
        results = []
    return messages + _observation(results)


def _observation(results: list[str]) -> list[Message]:
    return (
        [{"role": "observation", "content": "\n</tool_response>\n<tool_response>\n".join(results)}] if results else []
    )


def _calls_json(calls: Any, i: int, where: str) -> str:
    try:
        return json.dumps([call["function"] for call in calls], ensure_ascii=False)
    except (KeyError, TypeError):
        raise DataError(
            f"{where}: turn {i} has 'tool_calls' that are not a list of {{'function': {{'name', 'arguments'}}}}"
        ) from None


def _tools(row: Mapping[str, Any], where: str, source: DatasetSource | None) -> dict[str, str]:
    """``{"tools": JSON text}`` for a row with tool definitions (a string column kept as written, a list
    serialised), else nothing.
    Registry datasets read them from a mapped ``tools`` column, as LLaMA-Factory does; plain files from ``tools``."""
    column = source.columns.get("tools") if source and source.formatting else "tools"
    value = row.get(column) if column else None
    if value is None or value == "":
        return {}
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: column {column!r} is not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(tools, list) or not all(isinstance(tool, Mapping) and _tool_name(tool) for tool in tools):
        raise DataError(
            f"{where}: column {column!r} must be a JSON list of tool definitions, each with a 'name' (or an "
            f"OpenAI-style {{'type': 'function', 'function': {{'name': ...}}}}); got {_kind(tools)}"
        )
    return {"tools": text}


def _tool_name(tool: Mapping[str, Any]) -> Any:
    function = tool.get("function") if tool.get("type") == "function" else tool
    return function.get("name") if isinstance(function, Mapping) else None


def _found(row: Mapping[str, Any]) -> str:
    return ", ".join(sorted(row)) or "no columns"


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _from_messages(raw: Any, where: str, column: str = "messages") -> list[Message]:
    """``{role, content}`` rows; ``tool`` results and assistant ``tool_calls`` read as in OpenAI's format."""
    if not isinstance(raw, (list, tuple)):
        raise DataError(f"{where}: {column!r} must be a list of {{role, content}} objects")
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not (isinstance(item.get("content"), str) or item.get("tool_calls")):
            raise DataError(f"{where}: {column}[{i}] needs a string 'content' and a 'role'")
    turns = [{**item, "role": _PLAIN_ROLES.get(str(item.get("role")), str(item.get("role")))} for item in raw]
    return _openai_turns(turns, _PLAIN_TAGS, where)


def _filled(messages: list[Message], placeholders: Mapping[str, str], where: str) -> list[Message]:
    """Placeholders are filled in what people wrote (not in tool calls or results, which hold JSON)."""
    return [
        {"role": m["role"], "content": fill_placeholders(m["content"], placeholders, where)}
        if m["role"] in ("system", "user", "assistant") else m
        for m in messages
    ]  # fmt: skip


def _check_order(messages: list[Message], where: str, last: str = "assistant") -> None:
    """LLaMA-Factory's order: after an optional system message, user or observation turns alternate
    with assistant or function-call turns."""
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    turns = messages[offset:]
    for i, message in enumerate(turns):
        expected = ("user", "observation") if i % 2 == 0 else ("assistant", "function")
        if message["role"] not in expected:
            raise DataError(
                f"{where}: message {i + offset} has role {message['role']!r}, "
                f"expected {expected[0]!r} or {expected[1]!r} "
                "(after an optional system message, user/observation turns alternate with assistant/function turns)"
            )
        if not message["content"].strip():
            raise DataError(f"{where}: message {i + offset} ({message['role']}) is empty")
    if not turns or turns[-1]["role"] not in _LAST_ROLES[last]:
        raise DataError(f"{where}: {_LAST_TURN[last]}")
