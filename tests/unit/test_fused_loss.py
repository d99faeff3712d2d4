"""The chunked LM head + cross-entropy equals the plain one, in loss and in both gradients, and the SFT
objective uses it without changing a number."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from raytune_ft.config import load_config
from raytune_ft.data import IGNORE_INDEX
from raytune_ft.train import build_training
from raytune_ft.train.fused_loss import chunked_linear_cross_entropy, hidden_states_instead_of_logits
from raytune_ft.train.objectives import SFTObjective, causal_lm_loss_sum, model_inputs
from tests.unit.test_step import identity_batch


def _inputs(frozen_weight: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(101, 16, dtype=torch.float64, requires_grad=not frozen_weight)
    targets = torch.randint(0, 101, (37,))
    targets[[0, 5, 6, 30]] = IGNORE_INDEX
    return hidden, weight, targets


@pytest.mark.parametrize("frozen_weight", [False, True], ids=["full", "frozen-head"])
@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
def test_equals_cross_entropy_on_full_logits(chunk: int, frozen_weight: bool) -> None:
    hidden, weight, targets = _inputs(frozen_weight)
    reference = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    expected = torch.autograd.grad(reference * 3.0, [hidden, weight] if not frozen_weight else [hidden])
    loss = chunked_linear_cross_entropy(hidden, weight, targets, IGNORE_INDEX, chunk)
    got = torch.autograd.grad(loss * 3.0, [hidden, weight] if not frozen_weight else [hidden])  # upstream grad 3
    torch.testing.assert_close(loss.double(), reference, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_without_gradients_it_only_sums() -> None:
    hidden, weight, targets = _inputs(False)
    with torch.no_grad():
        loss = chunked_linear_cross_entropy(hidden, weight, targets, IGNORE_INDEX, 8)
    reference = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(loss.double(), reference.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_sft_objective_matches_the_loss_on_full_logits(tiny_model_dir: Path, tokenizer: Any, adapter: str) -> None:
    """Full tuning trains the (tied) head through the chunked path; LoRA leaves it frozen."""
    cfg = load_config(None, [f"model.source={tiny_model_dir}", f"adapter.type={adapter}", "adapter.rank=8"])
    core, _ = build_training(cfg, 10, torch.device("cpu"))
    model, batch = core.model, identity_batch(tokenizer, 4)
    with hidden_states_instead_of_logits(model) as head:
        assert head is not None, "a plain linear head is computed in chunks"
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = SFTObjective().loss_sum(model, batch)
    fused_grads = torch.autograd.grad(fused, trainable)
    plain = causal_lm_loss_sum(model(**model_inputs(batch)).logits, batch["labels"])
    plain_grads = torch.autograd.grad(plain, trainable)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-4)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert model.get_output_embeddings() is not None and isinstance(model.get_output_embeddings(), torch.nn.Linear)


def test_a_scaled_head_keeps_the_plain_path(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.final_logit_softcapping = 30.0  # as Gemma 2 has: logits are not just the head's output
    with hidden_states_instead_of_logits(model) as head:
        assert head is None
