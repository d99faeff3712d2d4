"""Turn a batch of variable-length token rows into padded tensors for the model.

Padding is dynamic (to the longest row of the batch, right side), so short batches stay short;
padded positions get attention 0 and label ``IGNORE_INDEX``. Packed rows also get
``position_ids`` (the padding tail counts as one more sample), from which the model builds
attention that stays inside each sample.

``pack_batch`` is the padding-free alternative: the same rows, packed first-fit into as few rows as
hold them, so a micro-batch computes (almost) no padding and still holds exactly its own samples.
``pad_scored`` stacks the sequences of preference and KTO rows (chosen then rejected, or answer then
mismatched answer) so one forward scores them all. ``balanced_groups`` regroups rows into micro-batches
of about equal token counts, so data-parallel workers, which wait for each other at every step, finish
their micro-batches together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .encode import IGNORE_INDEX
from .packing import pack_samples

if TYPE_CHECKING:  # torch loads lazily: the tokenizer actors import this package and never pad
    import torch

__all__ = ["SCORED_SEQUENCES", "balanced_groups", "pack_batch", "pad_batch", "pad_scored", "token_runs"]

SCORED_SEQUENCES = {"preference": ("", "rejected_"), "kto": ("", "kl_")}
"""Column prefixes of the sequences each scored row format holds: ``{prefix}input_ids``,
``{prefix}labels`` and, once precomputed, ``{prefix}ref_logps``."""

Rows = Sequence[Sequence[int] | np.ndarray]


def pad_batch(input_ids: Rows, labels: Rows, pad_id: int, position_ids: Rows | None = None) -> dict[str, torch.Tensor]:
    """Right-pad rows to the batch maximum: ``input_ids``, ``attention_mask``, ``labels`` (+ ``position_ids``)."""
    import torch

    width = max(len(row) for row in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    lab = torch.full((len(input_ids), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    pos = torch.zeros((len(input_ids), width), dtype=torch.long) if position_ids is not None else None
    for i, (row, row_labels) in enumerate(zip(input_ids, labels, strict=True)):
        n = len(row)
        ids[i, :n] = torch.from_numpy(np.array(row, dtype=np.int64))
        lab[i, :n] = torch.from_numpy(np.array(row_labels, dtype=np.int64))
        mask[i, :n] = 1
        if pos is not None and position_ids is not None:
            pos[i, :n] = torch.from_numpy(np.array(position_ids[i], dtype=np.int64))
            pos[i, n:] = torch.arange(width - n)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": lab}
    return {**batch, "position_ids": pos} if pos is not None else batch


def pack_batch(input_ids: Rows, labels: Rows, pad_id: int, block_len: int) -> dict[str, torch.Tensor]:
    """The batch's rows packed into rows of at most ``block_len`` tokens (or the longest row), with
    ``position_ids`` restarting per sample: the loss terms are exactly those of ``pad_batch``."""
    width = max(block_len, *(len(row) for row in input_ids))
    rows = pack_samples([(_as_list(i), _as_list(lab)) for i, lab in zip(input_ids, labels, strict=True)], width)
    return pad_batch([r[0] for r in rows], [r[1] for r in rows], pad_id, position_ids=[r[2] for r in rows])


def balanced_groups(lengths: Sequence[int], size: int) -> list[list[int]]:
    """The indices of ``lengths`` in ceil(n / size) groups of ``size`` (one group smaller when n is not a
    multiple) whose summed lengths are as even as a greedy pass makes them: longest row first, each into
    the lightest group with room (Graham's longest-processing-time rule, with a capacity; for pairs it
    puts the i-th longest row with the i-th shortest). Groups come in the order of their first row, rows
    in their given order, so a seeded shuffle stays seeded."""
    count = -(-len(lengths) // size)
    room = [size] * count
    if count:
        room[-1] = len(lengths) - size * (count - 1)
    loads = [0] * count
    groups: list[list[int]] = [[] for _ in range(count)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        lightest = min((g for g in range(count) if room[g]), key=lambda g: (loads[g], g))
        groups[lightest].append(i)
        loads[lightest] += lengths[i]
        room[lightest] -= 1
    return sorted((sorted(group) for group in groups), key=lambda group: group[0])


def token_runs(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """The indices of ``lengths`` in consecutive runs whose summed lengths stay within ``budget``; a row
    longer than ``budget`` runs alone."""
    runs: list[list[int]] = []
    load = 0
    for i, length in enumerate(lengths):
        if runs and load + length <= budget:
            runs[-1].append(i)
            load += length
        else:
            runs.append([i])
            load = length
    return runs


def _as_list(row: Sequence[int] | np.ndarray) -> list[int]:
    return row.tolist() if isinstance(row, np.ndarray) else list(row)


def pad_scored(batch: Mapping[str, Rows], pad_id: int, prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every row's first sequence, then every row's second (``prefixes``), padded into one batch of
    2 x rows, with ``ref_logps`` stacked the same way when the rows carry them and ``kto_label``."""
    import torch

    ids = [row for prefix in prefixes for row in batch[f"{prefix}input_ids"]]
    labels = [row for prefix in prefixes for row in batch[f"{prefix}labels"]]
    out = pad_batch(ids, labels, pad_id)
    if f"{prefixes[0]}ref_logps" in batch:
        ref = [np.asarray(batch[f"{prefix}ref_logps"], dtype=np.float32) for prefix in prefixes]
        out["ref_logps"] = torch.from_numpy(np.concatenate(ref))
    if "kto_label" in batch:
        out["kto_label"] = torch.from_numpy(np.asarray(batch["kto_label"], dtype=np.bool_))
    return out
