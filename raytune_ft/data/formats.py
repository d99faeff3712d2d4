"""Normalise source rows into the canonical SFT row: ``{"messages": [{"role", "content"}, ...]}``.

Registry datasets say their format (LLaMA-Factory's alpaca, sharegpt or openai, with column and
tag mappings); for bundled data and plain files, alpaca rows (instruction/input/output, optional
system and history) and rows holding ``messages`` are recognised per row. ``{{key}}`` placeholders
are filled here, once, so every later stage sees final text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .sources import DataError, DatasetSource

__all__ = ["fill_placeholders", "normalize_row"]

Message = dict[str, str]
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


def fill_placeholders(text: str, values: Mapping[str, str], where: str) -> str:
    """Replace ``{{key}}`` with ``values[key]``; an unknown key is an error naming ``where``."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise DataError(f"{where}: placeholder {{{{{key}}}}} has no value; set data.placeholders.{key}")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


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
    return [{"role": m["role"], "content": fill_placeholders(m["content"], placeholders, where)} for m in messages]


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: column {key!r} must be a string, got {type(value).__name__}")
    return value


def _from_alpaca(row: Mapping[str, Any], where: str, columns: Mapping[str, str]) -> list[Message]:
    for key in ("prompt", "response"):
        if columns[key] not in row:
            raise DataError(
                f"{where}: missing column {columns[key]!r} (the alpaca {key!r} column); found: {_found(row)}"
            )
    messages: list[Message] = []
    system = _text(row, columns["system"], where)
    if system:
        messages.append({"role": "system", "content": system})
    for pair in row.get(columns["history"]) or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{where}: {columns['history']!r} must be a list of [prompt, response] pairs")
        messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
    prompt = "\n".join(p for p in (_text(row, columns["prompt"], where), _text(row, columns["query"], where)) if p)
    response = _text(row, columns["response"], where)
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _from_sharegpt(row: Mapping[str, Any], where: str, source: DatasetSource) -> list[Message]:
    openai = source.formatting == "openai"
    tags = {**(_OPENAI_TAGS if openai else _SHAREGPT_TAGS), **source.tags}
    column = source.columns.get("messages", "messages" if openai else "conversations")
    turns = row.get(column)
    if not isinstance(turns, (list, tuple)):
        raise DataError(f"{where}: column {column!r} must hold the list of turns; found: {_found(row)}")
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system"}
    messages: list[Message] = []
    system = _text(row, source.columns.get("system", "system"), where)
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        role = turn.get(tags["role_tag"]) if isinstance(turn, Mapping) else None
        content = turn.get(tags["content_tag"]) if isinstance(turn, Mapping) else None
        if role in (tags["observation_tag"], tags["function_tag"]):
            raise DataError(f"{where}: turn {i} is a tool turn ({role!r}); tool-call training is not supported yet")
        if role not in roles or not isinstance(content, str):
            raise DataError(
                f"{where}: turn {i} needs {tags['role_tag']!r} in {sorted(roles)} and a string "
                f"{tags['content_tag']!r}; got {dict(turn) if isinstance(turn, Mapping) else turn!r}"
            )
        messages.append({"role": roles[role], "content": content})
    return messages


def _found(row: Mapping[str, Any]) -> str:
    return ", ".join(sorted(row)) or "no columns"


def _from_messages(raw: Any, where: str) -> list[Message]:
    if not isinstance(raw, (list, tuple)):
        raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("content"), str):
            raise DataError(f"{where}: messages[{i}] needs a string 'content' and a 'role'")
        messages.append({"role": str(item.get("role")), "content": item["content"]})
    return messages


def _check_order(messages: list[Message], where: str) -> None:
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    turns = messages[offset:]
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise DataError(
                f"{where}: message {i + offset} has role {message['role']!r}, expected {expected!r} "
                "(conversations alternate user/assistant after an optional system message)"
            )
        if not message["content"].strip():
            raise DataError(f"{where}: message {i + offset} ({message['role']}) is empty")
    if not turns or turns[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation must end with an assistant message to learn from")
