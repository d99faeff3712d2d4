"""Render conversations with the chat template and tokenize them with exact label masks.

A sample is a list of segments: pieces of text (each tokenized on its own) or of token ids, each
learned or not. With the tokenizer's own chat template, ``render_segments`` applies it to growing
prefixes of the conversation, so every assistant answer is located by the template itself, never by
guessing at role markers: prompt spans get ``IGNORE_INDEX`` labels, answer spans (including the
end-of-turn token) keep their ids. A named template (``templates.py``) yields its segments element by
element, as LLaMA-Factory encodes them. All segment texts of a batch go through the fast tokenizer in
one call.

Truncation policy: a sample longer than ``cutoff_len`` keeps its first ``cutoff_len`` tokens; a
sample left with no answer token to learn from is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .sources import DataError

__all__ = [
    "IGNORE_INDEX",
    "FirstLabel",
    "Piece",
    "Segment",
    "encode_batch",
    "encode_full",
    "render_segments",
    "truncate",
]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class FirstLabel:
    """A prompt piece whose first position is labelled ``token_id`` and the rest masked: an efficient-eos
    template (``templates.py``) learns the eos that ends an answer there instead of feeding it as input."""

    token_id: int


Piece = str | tuple[int, ...]
"""Text, tokenized on its own (without special tokens added), or token ids put in as they are."""
Segment = tuple[Piece, bool | FirstLabel]
"""A piece of the sample and whether the loss is computed on its tokens."""


def render_segments(
    tokenizer: Any, messages: Sequence[dict[str, str]], train_on_prompt: bool, mask_history: bool = False
) -> list[Segment]:
    """Split the rendered conversation into (text, trainable) pieces along assistant turns.

    Every answer is learned, or with ``mask_history`` only the last one (earlier turns are context).
    """
    segments: list[Segment] = []
    rendered = ""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant") if messages else -1
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise DataError(
                "the chat template does not render conversations prefix-consistently (an earlier turn "
                "changes when a later one is added), so answer spans cannot be located for masking"
            )
        learned = not mask_history or i == last
        segments += [(prompt[len(rendered) :], train_on_prompt and learned), (full[len(prompt) :], learned)]
        rendered = full
    return segments


def encode_batch(
    tokenizer: Any, conversations: Sequence[list[Segment]], cutoff_len: int
) -> list[tuple[list[int], list[int]] | None]:
    """Token ids and labels per conversation; ``None`` for a sample with nothing left to learn."""
    return [truncate(ids, labels, cutoff_len) for ids, labels in encode_full(tokenizer, conversations)]


def encode_full(tokenizer: Any, conversations: Sequence[list[Segment]]) -> list[tuple[list[int], list[int]]]:
    """Untruncated token ids and labels per conversation, from one batched tokenizer call."""
    texts = [piece for segments in conversations for piece, _ in segments if isinstance(piece, str)]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    out: list[tuple[list[int], list[int]]] = []
    for segments in conversations:
        input_ids: list[int] = []
        labels: list[int] = []
        first: int | None = None  # a FirstLabel waiting for its token (its piece may encode to nothing)
        for piece, learn in segments:
            tokens = list(next(encoded)) if isinstance(piece, str) else list(piece)
            input_ids += tokens
            if isinstance(learn, FirstLabel):
                first, learn = learn.token_id, False
            piece_labels = tokens if learn else [IGNORE_INDEX] * len(tokens)
            if first is not None and tokens:
                piece_labels, first = [first, *piece_labels[1:]], None
            labels += piece_labels
        out.append((input_ids, labels))
    return out


def truncate(input_ids: list[int], labels: list[int], cutoff_len: int) -> tuple[list[int], list[int]] | None:
    """The first ``cutoff_len`` tokens, or None when no answer token is left to learn from."""
    input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
    return (input_ids, labels) if any(label != IGNORE_INDEX for label in labels) else None


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)
