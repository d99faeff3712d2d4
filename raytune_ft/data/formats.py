"""Normalise source rows into the canonical SFT row: ``{"messages": [{"role", "content"}, ...]}``.

Alpaca rows (instruction/input/output, optional system and history) and rows that already hold
``messages`` are recognised per row, so one loader serves both. ``{{key}}`` placeholders are filled
here, once, so every later stage sees final text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .sources import DataError

__all__ = ["fill_placeholders", "normalize_row"]

Message = dict[str, str]
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_ROLES = {"system", "user", "assistant"}


def fill_placeholders(text: str, values: Mapping[str, str], where: str) -> str:
    """Replace ``{{key}}`` with ``values[key]``; an unknown key is an error naming ``where``."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise DataError(f"{where}: placeholder {{{{{key}}}}} has no value; set data.placeholders.{key}")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def normalize_row(row: Mapping[str, Any], placeholders: Mapping[str, str], where: str) -> list[Message]:
    """Canonical messages for one row (alpaca or messages format); ``where`` names it in errors."""
    if "messages" in row and row["messages"] is not None:
        messages = _from_messages(row["messages"], where)
    elif "instruction" in row and "output" in row:
        messages = _from_alpaca(row, where)
    else:
        raise DataError(
            f"{where}: row has neither 'messages' nor alpaca 'instruction'/'output' columns "
            f"(found: {', '.join(sorted(row)) or 'none'})"
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


def _from_alpaca(row: Mapping[str, Any], where: str) -> list[Message]:
    messages: list[Message] = []
    system = _text(row, "system", where)
    if system:
        messages.append({"role": "system", "content": system})
    for pair in row.get("history") or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{where}: 'history' must be a list of [prompt, response] pairs")
        messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
    prompt = "\n".join(p for p in (_text(row, "instruction", where), _text(row, "input", where)) if p)
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row, "output", where)}]
    return messages


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
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] not in _ROLES or message["role"] != expected:
            raise DataError(
                f"{where}: message {i} has role {message['role']!r}, expected {expected!r} "
                "(conversations alternate user/assistant after an optional system message)"
            )
        if not message["content"].strip():
            raise DataError(f"{where}: message {i} ({message['role']}) is empty")
    if not turns or turns[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation must end with an assistant message to learn from")
