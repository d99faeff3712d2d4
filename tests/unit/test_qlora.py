"""QLoRA: the base loads in 4-bit/8-bit through bitsandbytes, LoRA trains on it, the loss falls and the
quantized weights stay frozen; on CPU (bitsandbytes' CPU backend) and, gpu-marked, on CUDA. A checkpoint
exports by merging into the full-precision base, never into the quantized one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import load_config
from raytune_ft.export import merge_checkpoint
from raytune_ft.train import TrainState, build_training, save_checkpoint

pytest.importorskip("bitsandbytes")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu])]
QUANTIZED = ("Linear4bit", "Linear8bitLt")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_lora_on_a_quantized_base(
    tiny_model_dir: Path, identity_batch: Any, tmp_path: Path, bits: int, device: str
) -> None:
    cfg = load_config(None, [f"model.source={tiny_model_dir}", f"model.quantization_bit={bits}",
                             f"scaling.use_gpu={device == 'cuda'}", "adapter.rank=16", "train.learning_rate=1e-2",
                             "train.lr_scheduler=constant"])  # fmt: skip
    where = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    core, tokenizer = build_training(cfg, total_steps=8, device=where)
    quantized = [name for name, module in core.model.named_modules() if type(module).__name__ in QUANTIZED]
    assert quantized, "the base linear layers are bitsandbytes layers"
    frozen = {n: p.detach().clone() for n, p in core.model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in core.model.named_parameters() if p.requires_grad}
    batch = {k: v.to(where) for k, v in identity_batch(4).items()}
    losses = [core.step([batch]).loss_sum for _ in range(8)]
    assert losses[-1] < losses[0] - 1.0, losses
    for name, param in core.model.named_parameters():
        if name in frozen:
            assert torch.equal(param.detach(), frozen[name]), name
    assert all(not torch.equal(p.detach(), lora[n]) for n, p in core.model.named_parameters() if "lora_B" in n)

    save_checkpoint(tmp_path, core, tokenizer, cfg, TrainState(global_step=8))
    merged = merge_checkpoint(tmp_path)
    kinds = {type(module).__name__ for module in merged.model.modules()}
    assert not kinds & set(QUANTIZED), "the export merged into the full-precision base"
    assert all(p.dtype == torch.float32 for p in merged.model.parameters())
