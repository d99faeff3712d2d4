"""QLoRA on a CUDA GPU: the base loads in 4-bit/8-bit through bitsandbytes, LoRA trains on it, the loss
falls and the quantized weights stay frozen. Skipped without CUDA and bitsandbytes; on CPU the config
refuses quantization_bit with a clear error (tests/unit/test_qlora_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raytune_ft.config import load_config
from raytune_ft.train import build_training

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_lora_on_a_quantized_base(tiny_model_dir: Path, identity_batch: object, bits: int) -> None:
    pytest.importorskip("bitsandbytes")
    cfg = load_config(None, [f"model.source={tiny_model_dir}", f"model.quantization_bit={bits}", "scaling.use_gpu=true",
                             "adapter.rank=16", "train.learning_rate=1e-2", "train.lr_scheduler=constant"])  # fmt: skip
    device = torch.device("cuda", torch.cuda.current_device())
    core, _ = build_training(cfg, total_steps=8, device=device)
    quantized = [
        name for name, module in core.model.named_modules() if type(module).__name__ in ("Linear4bit", "Linear8bitLt")
    ]
    assert quantized, "the base linear layers are bitsandbytes layers"
    frozen = {n: p.detach().clone() for n, p in core.model.named_parameters() if not p.requires_grad}
    batch = {k: v.to(device) for k, v in identity_batch(4).items()}  # type: ignore[operator]
    losses = [core.step([batch]).loss_sum for _ in range(8)]
    assert losses[-1] < losses[0]
    for name, param in core.model.named_parameters():
        if name in frozen:
            assert torch.equal(param.detach(), frozen[name]), name
