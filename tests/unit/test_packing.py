"""Packing and padding-free micro-batches: whole samples per row, position ids restarting per sample,
and a loss identical to padded training on every architecture in ``PACKED_ATTENTION`` (attention
cannot cross samples); other architectures are padded."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from raytune_ft.config import load_config
from raytune_ft.data import (
    BUILTIN_DATASETS,
    IGNORE_INDEX,
    encode_batch,
    normalize_row,
    pack_batch,
    pack_samples,
    pad_batch,
    padding_efficiency,
    render_segments,
)
from raytune_ft.models import PACKED_ATTENTION
from raytune_ft.models.attention import transformers_attention
from raytune_ft.train import SFTObjective, collator

NAMES = {"name": "Raytune", "author": "the raytune_ft team"}


def samples(tokenizer: Any, n: int) -> list[tuple[list[int], list[int]]]:
    rows = [json.loads(line) for line in BUILTIN_DATASETS["alpaca_300"].read_text().splitlines()[:n]]
    convs = [render_segments(tokenizer, normalize_row(r, NAMES, "alpaca"), False) for r in rows]
    return [e for e in encode_batch(tokenizer, convs, 512) if e is not None]


def test_rows_hold_whole_samples_with_restarting_positions() -> None:
    data = [([1] * 5, [7] * 5), ([2] * 3, [8] * 3), ([3] * 4, [9] * 4), ([4] * 2, [6] * 2)]
    rows = pack_samples(data, block_len=8)
    assert sorted(len(ids) for ids, _, _ in rows) == [6, 8]  # 5+3 and 4+2 (first fit, longest first)
    for ids, labels, positions in rows:
        starts = [i for i, p in enumerate(positions) if p == 0]
        assert all(labels[s] == IGNORE_INDEX for s in starts), "no token may learn the next sample's start"
        assert len(ids) == len(labels) == len(positions) <= 8
    assert sorted(t for ids, _, _ in rows for t in ids) == sorted(t for ids, _ in data for t in ids)
    with pytest.raises(ValueError, match="does not fit"):
        pack_samples([([1] * 9, [1] * 9)], block_len=8)


def test_padding_efficiency_counts_padding_of_each_batch() -> None:
    assert padding_efficiency([4, 2, 3, 3], batch_size=2) == pytest.approx(12 / 14)


def tiny(kind: str, vocab: int, kernel: str = "sdpa", device: str = "cpu", **overrides: Any) -> torch.nn.Module:
    """A random 2-layer model of ``kind`` with ``model.attn_implementation: kernel`` (ours for sdpa)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shapes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    config = AutoConfig.for_model(kind, vocab_size=vocab, num_key_value_heads=2, **shapes, **overrides)
    torch.manual_seed(0)
    implementation = transformers_attention(kernel, device)
    dtype = torch.bfloat16 if kernel.startswith("flash") else torch.float32  # FlashAttention runs in half precision
    return AutoModelForCausalLM.from_config(config, attn_implementation=implementation, dtype=dtype).to(device).eval()


NO_FLEX = {"stablelm"}
"""Model types transformers does not run with flex_attention (it refuses them when the model is built)."""


@pytest.mark.parametrize("kernel", ["sdpa", "flex_attention"])
@pytest.mark.parametrize("kind", sorted(PACKED_ATTENTION))
def test_packed_loss_equals_unpacked_loss(tokenizer: Any, kind: str, kernel: str) -> None:
    """Forward only for flex_attention: torch has no flex backward pass on CPU."""
    data = samples(tokenizer, 6)
    if kernel == "flex_attention" and kind in NO_FLEX:
        with pytest.raises(ValueError, match=r"(?i)flex"):
            tiny(kind, len(tokenizer), kernel)
        return
    model = tiny(kind, len(tokenizer), kernel)
    objective = SFTObjective()
    plain = pad_batch([ids for ids, _ in data], [labels for _, labels in data], tokenizer.pad_token_id)
    rows = pack_samples(data, block_len=256)
    assert len(rows) < len(data), "the samples must actually share rows"
    packed = pad_batch(*zip(*[(i, lab) for i, lab, _ in rows], strict=True), tokenizer.pad_token_id,
                       position_ids=[pos for _, _, pos in rows])  # fmt: skip
    with torch.no_grad():
        plain_loss, packed_loss = objective.loss_sum(model, plain), objective.loss_sum(model, packed)
    assert objective.terms(packed) == objective.terms(plain)
    assert abs(packed_loss.item() - plain_loss.item()) < 2e-3  # a float32 sum of ~1,800

    # Without restarting positions the samples would see each other: the loss must differ.
    crossed = {k: v for k, v in packed.items() if k != "position_ids"}
    with torch.no_grad():
        assert abs(objective.loss_sum(model, crossed).item() - plain_loss.item()) > 1e-2


def packed_and_plain(tokenizer: Any, n: int, block_len: int = 256) -> tuple[dict[str, Any], dict[str, Any]]:
    data = samples(tokenizer, n)
    plain = pad_batch([ids for ids, _ in data], [labels for _, labels in data], tokenizer.pad_token_id)
    rows = pack_samples(data, block_len=block_len)
    packed = pad_batch(*zip(*[(i, lab) for i, lab, _ in rows], strict=True), tokenizer.pad_token_id,
                       position_ids=[pos for _, _, pos in rows])  # fmt: skip
    return packed, plain


def test_sdpa_keeps_the_sliding_window_inside_each_sample(tokenizer: Any) -> None:
    """A window shorter than the samples: our sdpa masks it per sample, as transformers' mask does on padded rows."""
    packed, plain = packed_and_plain(tokenizer, 6)
    model, objective = tiny("mistral", len(tokenizer), sliding_window=16), SFTObjective()
    wide = tiny("mistral", len(tokenizer), sliding_window=4096)
    with torch.no_grad():
        windowed = objective.loss_sum(model, packed).item()
        assert windowed == pytest.approx(objective.loss_sum(model, plain).item(), abs=2e-3)
        assert abs(windowed - objective.loss_sum(wide, packed).item()) > 1e-2, "the window must matter here"


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["flash_attention_2", "flash_attention_3", "flex_attention"])
def test_cuda_kernels_keep_packed_samples_apart_and_train(tokenizer: Any, kernel: str) -> None:
    """On CUDA: packed loss equals the padded loss (bf16 tolerance) and the backward pass runs."""
    from raytune_ft.models.attention import _flash_available

    if kernel.startswith("flash") and not _flash_available(kernel):
        pytest.skip(f"{kernel}: its package is not installed here")
    packed, plain = packed_and_plain(tokenizer, 6)
    packed, plain = ({k: v.cuda() for k, v in batch.items()} for batch in (packed, plain))
    model, objective = tiny("llama", len(tokenizer), kernel, device="cuda"), SFTObjective()
    with torch.no_grad():
        per_token = (objective.loss_sum(model, packed) - objective.loss_sum(model, plain)) / objective.terms(plain)
    assert abs(per_token.item()) < 2e-2
    model.train()
    objective.loss_sum(model, packed).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["llama", "gemma", "phi3"])
def test_loss_on_learned_positions_equals_full_logits_loss(tokenizer: Any, kind: str) -> None:
    """SFTObjective runs the LM head only where the next token is learned; the loss must not change."""
    from raytune_ft.train import causal_lm_loss_sum
    from raytune_ft.train.objectives import model_inputs

    data = samples(tokenizer, 4)
    model = tiny(kind, len(tokenizer))
    batch = pad_batch([ids for ids, _ in data], [labels for _, labels in data], tokenizer.pad_token_id)
    with torch.no_grad():
        full = causal_lm_loss_sum(model(**model_inputs(batch)).logits, batch["labels"])
        selected = SFTObjective().loss_sum(model, batch)
    assert selected.item() == pytest.approx(full.item(), rel=1e-5)


def test_padding_free_batch_holds_the_same_samples_and_loss(tokenizer: Any) -> None:
    data = samples(tokenizer, 4)
    ids, labels = [i for i, _ in data], [lab for _, lab in data]
    padded = pad_batch(ids, labels, tokenizer.pad_token_id)
    packed = pack_batch(ids, labels, tokenizer.pad_token_id, block_len=512)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert int(packed["attention_mask"].sum()) == int(padded["attention_mask"].sum()) == sum(map(len, ids))
    model, objective = tiny("llama", len(tokenizer)), SFTObjective()
    assert objective.terms(packed) == objective.terms(padded)
    with torch.no_grad():
        packed_loss, padded_loss = objective.loss_sum(model, packed), objective.loss_sum(model, padded)
    assert packed_loss.item() == pytest.approx(padded_loss.item(), abs=2e-3)
    # A row longer than the block still gets a row of its own, and a short block splits the batch.
    assert pack_batch(ids, labels, tokenizer.pad_token_id, block_len=8)["input_ids"].shape[0] == len(ids)


@pytest.mark.parametrize(
    ("kind", "overrides", "padding_free"),
    [("llama", [], True), ("falcon", [], False), ("llama", ["data.padding_free=false"], False),
     ("llama", ["data.packing=true"], False)],
)  # fmt: skip
def test_collator_packs_micro_batches_only_where_attention_stays_in_sample(
    tokenizer: Any, kind: str, overrides: list[str], padding_free: bool
) -> None:
    from transformers import AutoConfig

    assert "falcon" not in PACKED_ATTENTION  # its ALiBi attention crosses samples in a packed row
    model = torch.nn.Module()
    model.config = AutoConfig.for_model(kind)  # type: ignore[assignment]
    data = samples(tokenizer, 3)
    rows = {"input_ids": [i for i, _ in data], "labels": [lab for _, lab in data]}
    batch = collator(load_config(None, overrides), model, tokenizer.pad_token_id)(rows)
    assert ("position_ids" in batch) == padding_free
    assert batch["input_ids"].shape[0] == (1 if padding_free else 3)
