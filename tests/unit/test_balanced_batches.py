"""Micro-batches of even token counts (``data.balance_micro_batches``): every row once, even sums, and a
resumed run skips exactly the regrouped micro-batches it consumed."""

from __future__ import annotations

import itertools
import random
import statistics
from typing import Any

import numpy as np
import pytest

from raytune_ft.config import load_config
from raytune_ft.data import balanced_groups
from raytune_ft.train.checkpoint import TrainState
from raytune_ft.train.loop import BALANCE_WINDOW, _micro_batches


def skewed_lengths(n: int, seed: int = 0) -> list[int]:
    """Row lengths like instruction data: mostly short, a long tail."""
    rng = random.Random(seed)
    return [int(min(512, 20 + rng.expovariate(1 / 110))) for _ in range(n)]


@pytest.mark.parametrize(("n", "size"), [(64, 2), (64, 4), (63, 4), (5, 2), (1, 3), (0, 2)])
def test_groups_have_the_batch_size_and_hold_every_row_once(n: int, size: int) -> None:
    groups = balanced_groups(skewed_lengths(n), size)
    assert sorted(i for group in groups for i in group) == list(range(n))
    assert len(groups) == -(-n // size)
    assert sorted(len(group) for group in groups)[1:] == [size] * (len(groups) - 1)
    assert all(group == sorted(group) for group in groups)
    assert [group[0] for group in groups] == sorted(group[0] for group in groups)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_put_the_longest_rows_with_the_shortest(seed: int) -> None:
    lengths = skewed_lengths(64, seed)
    pairs = sorted(sorted(lengths[i] for i in group) for group in balanced_groups(lengths, 2))
    by_rank = sorted(lengths)
    assert pairs == sorted(sorted((by_rank[i], by_rank[-1 - i])) for i in range(32))


@pytest.mark.parametrize(("seed", "size"), [(0, 2), (1, 2), (0, 4), (1, 4)])
def test_token_sums_are_far_more_even_than_consecutive_rows(seed: int, size: int) -> None:
    lengths = skewed_lengths(64, seed)
    balanced = [sum(lengths[i] for i in group) for group in balanced_groups(lengths, size)]
    plain = [sum(lengths[i : i + size]) for i in range(0, 64, size)]
    assert statistics.pstdev(balanced) < statistics.pstdev(plain) / 2
    assert max(balanced) < max(plain)


class FakeShard:
    """What a Ray Train dataset shard gives the loop: numpy batches of the rows, in order."""

    def __init__(self, lengths: list[int]) -> None:
        self.rows = [np.arange(n, dtype=np.int64) + 1000 * i for i, n in enumerate(lengths)]

    def iter_batches(self, batch_size: int, **_: Any) -> Any:
        for start in range(0, len(self.rows), batch_size):
            chunk = self.rows[start : start + batch_size]
            column = np.empty(len(chunk), dtype=object)
            column[:] = chunk
            yield {"input_ids": column, "labels": column.copy()}


def row_ids(batch: dict[str, Any]) -> list[int]:
    return [int(row[0]) // 1000 for row in batch["input_ids"]]


def micro_batches(shard: FakeShard, state: TrainState, balance: bool, count: int) -> list[list[int]]:
    cfg = load_config(None, ["model.source=x", "data.dataset=[x]", "train.per_device_batch_size=2"])
    stream = _micro_batches(shard, cfg, row_ids, state, seed=0, balance=balance)  # type: ignore[arg-type]
    return list(itertools.islice(stream, count))


def test_an_epoch_uses_every_row_once_in_even_micro_batches() -> None:
    lengths = skewed_lengths(2 * BALANCE_WINDOW * 2 + 6)  # two full windows and a partial one
    shard = FakeShard(lengths)
    per_epoch = len(lengths) // 2
    batches = micro_batches(shard, TrainState(), balance=True, count=per_epoch)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    sums = [sum(lengths[i] for i in batch) for batch in batches[:BALANCE_WINDOW]]
    assert sorted(i for batch in batches[:BALANCE_WINDOW] for i in batch) == list(range(2 * BALANCE_WINDOW))
    plain = micro_batches(shard, TrainState(), balance=False, count=BALANCE_WINDOW)
    plain_sums = [sum(lengths[i] for i in batch) for batch in plain]
    assert statistics.pstdev(sums) < statistics.pstdev(plain_sums) / 2


def test_a_resumed_run_continues_with_the_same_micro_batches() -> None:
    shard = FakeShard(skewed_lengths(150))
    whole = micro_batches(shard, TrainState(), balance=True, count=80)  # into the second epoch
    resumed = micro_batches(shard, TrainState(epoch=0, batches_in_epoch=37), balance=True, count=43)
    assert resumed == whole[37:]
