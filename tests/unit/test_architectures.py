"""Tiny random models of several architectures train through the same step core, with LoRA
(``all`` resolving to each architecture's linear layers) and with full tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import load_config
from raytune_ft.train import build_training

CPU = torch.device("cpu")
ARCHITECTURES = {
    "llama": {},
    "qwen2": {},
    "mistral": {},
    "gemma": {"head_dim": 16},
    "phi3": {},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def arch_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    kind = request.param
    config = AutoConfig.for_model(
        kind, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **ARCHITECTURES[kind],
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(kind)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def unadapted_linears(model: torch.nn.Module) -> set[str]:
    """Linear layers LoRA left alone (peft wraps each target and keeps it as ``base_layer``)."""
    return {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and not name.endswith("base_layer")
    } - {"lm_head"}


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_architecture_trains(arch_dir: Path, identity_batch: Any, adapter: str) -> None:
    cfg = load_config(None, [f"model.source={arch_dir}", f"adapter.type={adapter}", "adapter.rank=16",
                             "train.learning_rate=1e-2", "train.lr_scheduler=constant", "train.seed=0"])  # fmt: skip
    core, _ = build_training(cfg, 20, CPU)
    before = {n: p.detach().clone() for n, p in core.model.named_parameters() if p.requires_grad}
    data = identity_batch()
    losses = [s.loss_sum / s.terms for s in (core.step([data]) for _ in range(12))]
    assert losses[-1] < losses[0] - 0.3, losses
    changed = [n for n, p in core.model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert changed and len(changed) == len(before), "every trainable weight moves"
    if adapter == "lora":
        assert any("lora_A" in n for n in before)
        assert not unadapted_linears(core.model), "adapter.target all must reach every linear layer"


def test_lora_all_reaches_moe_experts_and_router(tmp_path: Path, tokenizer: Any) -> None:
    """transformers 5 fuses a MoE layer's experts into 3D parameters (not nn.Linear); peft still adapts them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mixtral", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                  num_local_experts=4, num_experts_per_tok=2)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    core, _ = build_training(load_config(None, [f"model.source={tmp_path}"]), 10, CPU)
    trainable = [n for n, p in core.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable)
    assert any(".mlp.experts." in n for n in trainable) and any(".mlp.gate." in n for n in trainable)
