"""Micro-batches run as forward passes of at most ``train.max_tokens_per_forward`` tokens: whole rows in
order, every pass within the budget, the same update as one pass over the micro-batch, and a smaller
activation peak."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raytune_ft.config import ConfigError, JobConfig, load_config
from raytune_ft.data import (
    BUILTIN_DATASETS,
    encode_batch,
    normalize_row,
    pack_batch,
    pad_batch,
    render_segments,
    token_runs,
)
from raytune_ft.train import build_training
from raytune_ft.train.loop import CPU_FORWARD_TOKENS, forward_budget, forward_passes

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("lengths", "budget", "runs"),
    [
        ([100, 100, 100, 100], 256, [[0, 1], [2, 3]]),
        ([50, 60, 70, 80], 256, [[0, 1, 2], [3]]),
        ([300, 20, 20], 256, [[0], [1, 2]]),  # a row over the budget runs alone
        ([20, 300, 20], 256, [[0], [1], [2]]),
        ([256, 1], 256, [[0], [1]]),
        ([128, 128], 256, [[0, 1]]),  # exactly the budget fits
        ([], 256, []),
    ],
)
def test_runs_keep_whole_rows_in_order_within_the_budget(lengths: list[int], budget: int, runs: Any) -> None:
    assert token_runs(lengths, budget) == runs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_run_of_more_than_one_row_fits_and_every_row_comes_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 400, size=64)]
    runs = token_runs(lengths, 256)
    assert [i for run in runs for i in run] == list(range(64))
    assert all(len(run) == 1 or sum(lengths[i] for i in run) <= 256 for run in runs)
    # a greedy pass: no run could have taken the next run's first row
    assert all(sum(lengths[i] for i in a) + lengths[b[0]] > 256 for a, b in itertools.pairwise(runs))


def identity_rows(tokenizer: Any, n: int) -> dict[str, np.ndarray]:
    """``n`` tokenized identity rows as a Ray Data numpy batch (object columns of int arrays)."""
    rows = [json.loads(line) for line in BUILTIN_DATASETS["identity"].read_text().splitlines()][:n]
    names = {"name": "Raytune", "author": "the raytune_ft team"}
    convs = [render_segments(tokenizer, normalize_row(r, names, "identity"), False) for r in rows]
    encoded = [e for e in encode_batch(tokenizer, convs, 256) if e is not None]
    columns: dict[str, np.ndarray] = {}
    for key, index in (("input_ids", 0), ("labels", 1)):
        columns[key] = np.empty(len(encoded), dtype=object)
        columns[key][:] = [np.asarray(e[index], dtype=np.int64) for e in encoded]
    return columns


def padding_free(pad_id: int) -> Any:
    return lambda b: pack_batch(b["input_ids"], b["labels"], pad_id, 256)


def padded(pad_id: int) -> Any:
    return lambda b: pad_batch(b["input_ids"], b["labels"], pad_id)


@pytest.mark.parametrize("collation", [padding_free, padded])
def test_passes_within_the_budget_give_the_update_of_one_pass(
    tiny_model_dir: Path, tokenizer: Any, collation: Any
) -> None:
    cfg = load_config(None, [f"model.source={tiny_model_dir}", "adapter.type=full", "train.max_grad_norm=null"])
    one, _ = build_training(cfg, 10, CPU)
    split, _ = build_training(cfg, 10, CPU)
    # SGD moves each weight by lr x its gradient, so equal weights mean equal gradients (AdamW's first step
    # moves every weight by about lr x sign(gradient), turning float noise near zero into lr-sized steps).
    for core in (one, split):
        core.optimizer = torch.optim.SGD([p for p in core.model.parameters() if p.requires_grad], lr=0.5)
    rows = identity_rows(tokenizer, 8)
    collate = collation(tokenizer.pad_token_id)
    budget = int(sum(len(r) for r in rows["input_ids"]) / 3)
    whole, parts = forward_passes(collate, None)(rows), forward_passes(collate, budget)(rows)
    assert len(whole) == 1 and len(parts) >= 3
    assert all(int(p["attention_mask"].sum()) <= budget or len(p["input_ids"]) == 1 for p in parts)
    a, b = one.step(whole), split.step(parts)
    assert (a.terms, a.tokens) == (b.terms, b.tokens)
    assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-5)
    for (name, x), (_, y) in zip(one.model.named_parameters(), split.model.named_parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=name)


def saved_activation_bytes(core: Any, batch: dict[str, torch.Tensor]) -> int:
    """Bytes autograd keeps for the backward pass of one forward, the weights it saves left out."""
    weights = {p.untyped_storage().data_ptr() for p in core.model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        core.objective.loss_sum(core.model, batch)
    return sum(saved.values())


def test_a_pass_keeps_the_activations_of_its_own_tokens_only(tiny_model_dir: Path, tokenizer: Any) -> None:
    core, _ = build_training(load_config(None, [f"model.source={tiny_model_dir}"]), 10, CPU)
    rows = identity_rows(tokenizer, 8)
    collate = padding_free(tokenizer.pad_token_id)
    whole = saved_activation_bytes(core, forward_passes(collate, None)(rows)[0])
    parts = forward_passes(collate, int(sum(len(r) for r in rows["input_ids"]) / 4))(rows)
    largest = max(saved_activation_bytes(core, part) for part in parts)
    assert len(parts) >= 4
    assert largest < whole / 2.5, (largest, whole)


class Model:
    """What ``forward_budget`` reads of a model: its config (a vision config makes it a VLM)."""

    def __init__(self, vision: bool = False) -> None:
        self.config = type("Config", (), {"vision_config": {} if vision else None})()


def budget(*overrides: str, device: str = "cpu", vision: bool = False, even: bool = False) -> int | None:
    cfg = load_config(None, ["model.source=x", "data.dataset=[x]", *overrides])
    return forward_budget(cfg, Model(vision), torch.device(device), even)


def test_auto_splits_text_rows_on_cpu_only() -> None:
    assert budget() == CPU_FORWARD_TOKENS == 256
    assert budget("data.packing=true") == 256
    assert budget("data.padding_free=false") == 256
    assert budget(device="cuda") is None
    assert budget("train.max_tokens_per_forward=1024", device="cuda") == 1024
    assert budget("train.max_tokens_per_forward=null") is None


@pytest.mark.parametrize("stage", ["dpo", "kto", "rm"])
def test_scored_rows_image_rows_and_strategies_needing_even_passes_run_whole(stage: str) -> None:
    assert budget(f"method.stage={stage}", "train.max_tokens_per_forward=64") is None
    assert budget("train.max_tokens_per_forward=64", vision=True) is None
    assert budget("train.max_tokens_per_forward=64", even=True) is None


@pytest.mark.parametrize("value", [0, -5, "some"])
def test_a_budget_must_be_a_positive_count_auto_or_null(value: object) -> None:
    with pytest.raises(ConfigError, match="max_tokens_per_forward"):
        load_config(None, [f"train.max_tokens_per_forward={value}"])
    assert JobConfig().train.max_tokens_per_forward == "auto"


def test_ddp_workers_may_run_uneven_passes_but_fsdp2_workers_may_not() -> None:
    from raytune_ft.train.strategies import DDPStrategy, FSDP2Strategy

    cfg = load_config(None, [])
    assert not DDPStrategy(CPU, cfg).even_passes
    assert FSDP2Strategy(CPU, cfg).even_passes
