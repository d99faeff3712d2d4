"""What a rollout engine loads for a LoRA run: the adapter (LoRA or DoRA, per-module ranks included) merged into
the base weights, held equal to peft's own merge; with adapter.init_from, into a base holding the adapters merged
before it; and whole attention/MLP blocks (vLLM fuses q/k/v and gate/up and reloads them whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.rl.engine import BaseWeights, LoraWeights, merged_adapter

MLP = ("gate_proj", "up_proj", "down_proj")


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


def peft_adapter(base: Path, folder: Path, seed: int, **lora: Any) -> Path:
    """A peft adapter on ``base`` with random, non-zero LoRA B (and DoRA magnitudes moved off their start)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(**lora))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                weight.add_(torch.randn_like(weight) * 0.1)
    model.save_pretrained(folder)
    return folder


def peft_merged(base: Path, *folders: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    for folder in folders:
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    return dict(model.state_dict())


def test_dora_and_per_module_ranks_merge_as_peft_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = peft_adapter(
        tiny_model_dir, tmp_path / "dora", 3, r=8, lora_alpha=16, use_dora=True, target_modules=["q_proj", "up_proj"],
        rank_pattern={"up_proj": 4}, alpha_pattern={"q_proj": 4},
    )  # fmt: skip
    merged = dict(merged_adapter(adapter_files(folder), BaseWeights(tiny_model_dir)))
    reference = peft_merged(tiny_model_dir, folder)
    assert {name.rsplit(".", 2)[1] for name in merged} == {"q_proj", "k_proj", "v_proj", "o_proj", *MLP}
    for name, weight in merged.items():
        torch.testing.assert_close(weight, reference[name], rtol=1e-5, atol=1e-6)
    assert LoraWeights.from_folder(folder).scale("model.layers.0.mlp.up_proj") == 16 / 4
    assert LoraWeights.from_folder(folder).scale("model.layers.1.self_attn.q_proj") == 4 / 8


def test_rslora_scales_by_the_root_of_the_rank(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = peft_adapter(tiny_model_dir, tmp_path / "rs", 7, r=16, lora_alpha=8, use_rslora=True,
                          target_modules=["v_proj"])  # fmt: skip
    merged = dict(merged_adapter(adapter_files(folder), BaseWeights(tiny_model_dir)))
    assert merged and LoraWeights.from_folder(folder).scale("model.layers.0.self_attn.v_proj") == 8 / 4
    reference = peft_merged(tiny_model_dir, folder)
    for name, weight in merged.items():
        torch.testing.assert_close(weight, reference[name], rtol=1e-5, atol=1e-6)


def test_init_from_adapters_merged_before_the_continued_one_make_the_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    """init_from [first, second]: the engine's base holds first merged (its MLP weights, which second never
    touches, must be loaded at start), and each published version of second merges on top of that."""
    first = peft_adapter(tiny_model_dir, tmp_path / "first", 4, r=4, lora_alpha=8, target_modules=["up_proj"])
    second = peft_adapter(tiny_model_dir, tmp_path / "second", 5, r=4, lora_alpha=8, target_modules=["q_proj"])
    base = BaseWeights(tiny_model_dir, [LoraWeights.from_folder(first)])
    assert base.changed() == [f"model.layers.{i}.mlp.up_proj.weight" for i in (0, 1)]
    reference = peft_merged(tiny_model_dir, first, second)
    at_start = dict(base.whole_blocks({name: base[name] for name in base.changed()}))
    assert {name.rsplit(".", 2)[1] for name in at_start} == set(MLP)
    for name, weight in [*at_start.items(), *merged_adapter(adapter_files(second), base)]:
        torch.testing.assert_close(weight, reference[name], rtol=1e-5, atol=1e-6)


def test_weights_the_engine_cannot_merge_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = peft_adapter(tiny_model_dir, tmp_path / "saved", 6, r=4, target_modules=["q_proj"],
                          modules_to_save=["lm_head"])  # fmt: skip
    with pytest.raises(ValueError, match=r"LoRA and DoRA weights only, not 'base_model\.model\.lm_head"):
        merged_adapter(adapter_files(folder), BaseWeights(tiny_model_dir))
    with pytest.raises(ValueError, match=r"LoRA and DoRA weights only"):
        LoraWeights.from_folder(folder)  # an adapter.init_from adapter the engine would merge into its base


def test_an_online_run_refuses_init_from_adapters_the_engines_cannot_merge(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from raytune_ft.config import ConfigError, JobConfig
    from raytune_ft.rl.launch import check_online

    folder = peft_adapter(tiny_model_dir, tmp_path / "saved", 6, r=4, target_modules=["q_proj"],
                          modules_to_save=["lm_head"])  # fmt: skip
    cfg = JobConfig.model_validate({"model": {"source": str(tiny_model_dir)}, "method": {"stage": "grpo"},
                                    "adapter": {"init_from": [str(folder)]}})  # fmt: skip
    with pytest.raises(ConfigError, match=rf"adapter.init_from {folder}: .*lm_head.*raytune-ft export"):
        check_online(cfg)
