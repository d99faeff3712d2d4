"""What a rollout engine loads for a LoRA run: the adapter merged into the base weights, held equal to peft's
own merge, and whole attention/MLP blocks (vLLM fuses q/k/v and gate/up and reloads them whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from raytune_ft.rl.engine import BaseWeights, merged_adapter


def adapter_files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.suffix in (".safetensors", ".json")}


def test_merge_equals_peft_merge_and_unload(tiny_model_dir: Path, tmp_path: Path, adapter_checkpoint: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = adapter_checkpoint(tiny_model_dir, tmp_path / "run", 1, seed=5)
    merged = dict(merged_adapter(adapter_files(folder), BaseWeights(tiny_model_dir)))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, folder).merge_and_unload().state_dict()
    for name, weight in merged.items():
        torch.testing.assert_close(weight, reference[name], rtol=1e-5, atol=1e-6)
    changed = {name for name, weight in merged.items() if not torch.equal(weight, BaseWeights(tiny_model_dir)[name])}
    assert changed == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qkvo"}


def test_untargeted_blocks_are_left_alone(tiny_model_dir: Path, tmp_path: Path, adapter_checkpoint: Any) -> None:
    """The adapter targets attention only: no MLP, norm or embedding weight is reloaded."""
    folder = adapter_checkpoint(tiny_model_dir, tmp_path / "run", 1, seed=6)
    names = {name for name, _ in merged_adapter(adapter_files(folder), BaseWeights(tiny_model_dir))}
    assert names and all(".self_attn." in name for name in names)
