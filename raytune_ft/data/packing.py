"""Pack tokenized samples into fixed-length rows so a batch is nearly all real tokens.

Samples are placed first-fit-decreasing into rows of ``block_len`` tokens. Each sample keeps its
own position ids (restarting at 0), which is what tells the model where one sample ends: with
``attention_mask`` left out, transformers builds a block-diagonal causal mask from the position
ids (varlen kernels on GPUs do the same), so no token attends across samples. The first label of
every sample is masked too, so no token learns to predict the next sample's start. Together these
make the packed loss equal the unpacked one.
"""

from __future__ import annotations

from collections.abc import Sequence

from .encode import IGNORE_INDEX

__all__ = ["PackedRow", "pack_samples", "padding_efficiency"]

PackedRow = tuple[list[int], list[int], list[int]]
"""``input_ids``, ``labels`` and ``position_ids`` of one packed row."""


def pack_samples(samples: Sequence[tuple[list[int], list[int]]], block_len: int) -> list[PackedRow]:
    """Rows of at most ``block_len`` tokens, each holding whole samples (first-fit decreasing)."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i][0]), reverse=True)
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(samples[i][0])
        if n > block_len:
            raise ValueError(f"sample of {n} tokens does not fit a packed row of {block_len}; truncate first")
        slot = next((b for b, free in enumerate(room) if free >= n), None)
        if slot is None:
            bins.append([])
            room.append(block_len)
            slot = len(bins) - 1
        bins[slot].append(i)
        room[slot] -= n
    return [_concat([samples[i] for i in members]) for members in bins]


def _concat(members: Sequence[tuple[list[int], list[int]]]) -> PackedRow:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for sample_ids, sample_labels in members:
        ids += sample_ids
        labels += [IGNORE_INDEX, *sample_labels[1:]]
        positions += list(range(len(sample_ids)))
    return ids, labels, positions


def padding_efficiency(row_lengths: Sequence[int], batch_size: int) -> float:
    """Real tokens / tokens computed when rows are batched in order and padded to each batch's longest."""
    real = sum(row_lengths)
    computed = sum(
        max(row_lengths[i : i + batch_size]) * len(row_lengths[i : i + batch_size])
        for i in range(0, len(row_lengths), batch_size)
    )
    return real / computed if computed else 0.0
