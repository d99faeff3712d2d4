"""QLoRA: the base loads in 4-bit/8-bit through bitsandbytes (or int8/int4 through torchao), LoRA trains on it,
the loss falls and the quantized weights stay frozen; on CPU (bitsandbytes' CPU backend, torchao's int8) and,
gpu-marked, on CUDA. A checkpoint exports by merging into the full-precision base, never into the quantized
one. A base saved already quantized trains LoRA as it is; full tuning, quantizing it again and merging into it
are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import ConfigError, load_config
from raytune_ft.export import ExportError, merge_checkpoint
from raytune_ft.models import ModelSourceError
from raytune_ft.train import TrainState, build_training, save_checkpoint

pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")

CUDA = pytest.mark.gpu
QUANTIZED = ("Linear4bit", "Linear8bitLt")
RUNS = [("bnb", 4, "cpu"), ("bnb", 8, "cpu"), ("torchao", 8, "cpu"), pytest.param("bnb", 4, "cuda", marks=CUDA),
        pytest.param("bnb", 8, "cuda", marks=CUDA), pytest.param("torchao", 4, "cuda", marks=CUDA)]  # fmt: skip


def quantized_layers(model: torch.nn.Module) -> list[str]:
    """bitsandbytes layers, and linear layers holding a torchao quantized tensor as their weight."""
    names = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        kind = type(weight.data if isinstance(weight, torch.nn.Parameter) else weight).__name__
        if type(module).__name__ in QUANTIZED or kind.startswith(("Int4", "Int8", "AffineQuantized")):
            names.append(name)
    return names


def plain(param: torch.Tensor) -> torch.Tensor:
    """A weight's values as a plain tensor (torchao's quantized tensors implement few operators)."""
    data = param.detach()
    return (data.dequantize() if type(data) is not torch.Tensor and hasattr(data, "dequantize") else data).clone()


@pytest.mark.parametrize(("method", "bits", "device"), RUNS)
def test_qlora_trains_lora_on_a_quantized_base(
    tiny_model_dir: Path, identity_batch: Any, tmp_path: Path, method: str, bits: int, device: str
) -> None:
    cfg = load_config(None, [f"model.source={tiny_model_dir}", f"model.quantization_bit={bits}",
                             f"model.quantization_method={method}", f"scaling.use_gpu={device == 'cuda'}",
                             "adapter.rank=16", "train.learning_rate=1e-2", "train.lr_scheduler=constant"])  # fmt: skip
    where = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    core, tokenizer = build_training(cfg, total_steps=8, device=where)
    assert quantized_layers(core.model), "the base linear layers are quantized"
    frozen = {n: plain(p) for n, p in core.model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in core.model.named_parameters() if p.requires_grad}
    batch = {k: v.to(where) for k, v in identity_batch(4).items()}
    losses = [core.step([batch]).loss_sum for _ in range(8)]
    assert losses[-1] < losses[0] - 1.0, losses
    for name, param in core.model.named_parameters():
        if name in frozen:
            assert torch.equal(plain(param), frozen[name]), name
    assert all(not torch.equal(p.detach(), lora[n]) for n, p in core.model.named_parameters() if "lora_B" in n)

    save_checkpoint(tmp_path, core, tokenizer, cfg, TrainState(global_step=8))
    merged = merge_checkpoint(tmp_path)
    assert not quantized_layers(merged.model), "the export merged into the full-precision base"
    assert all(p.dtype == torch.float32 for p in merged.model.parameters())


def test_torchao_int4_is_refused_on_cpu(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="runs on CUDA only"):
        load_config(
            None, [f"model.source={tiny_model_dir}", "model.quantization_bit=4", "model.quantization_method=torchao"]
        )


def test_a_base_saved_quantized_trains_lora_as_it_is_and_is_never_merged_into(
    tiny_model_dir: Path, identity_batch: Any, tmp_path: Path
) -> None:
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    base = tmp_path / "int8-base"  # what a Hub repo of a quantized model holds: config.json names its quant_method
    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
    )
    quantized.save_pretrained(base, safe_serialization=False)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    common = [f"model.source={base}", "adapter.rank=16", "train.learning_rate=1e-2", "train.lr_scheduler=constant"]

    cfg = load_config(None, common)
    core, tokenizer = build_training(cfg, total_steps=6, device=torch.device("cpu"))
    assert quantized_layers(core.model)
    losses = [core.step([identity_batch(4)]).loss_sum for _ in range(6)]
    assert losses[-1] < losses[0] - 0.5, losses
    save_checkpoint(tmp_path / "run", core, tokenizer, cfg, TrainState(global_step=6))
    with pytest.raises(ExportError, match="Merge into the full-precision model instead"):
        merge_checkpoint(tmp_path / "run")

    with pytest.raises(ModelSourceError, match=r"use adapter\.type lora"):
        build_training(load_config(None, [*common, "adapter.type=full"]), total_steps=2, device=torch.device("cpu"))
    with pytest.raises(ModelSourceError, match="already quantized"):
        build_training(
            load_config(None, [*common, "model.quantization_bit=8"]), total_steps=2, device=torch.device("cpu")
        )
