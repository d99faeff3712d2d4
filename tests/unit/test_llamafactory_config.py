"""Flat LLaMA-Factory YAMLs: translated into our config, ignored keys warned once, and keys we
cannot honour listed together in one error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raytune_ft.cli import main
from raytune_ft.config import ConfigError, ConfigWarning, load_config

SHIPPED = Path(__file__).parents[2] / "configs" / "llamafactory" / "smollm2_lora_sft.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lf.yaml"
    path.write_text(text)
    return path


def test_shipped_llamafactory_yaml_translates() -> None:
    with pytest.warns(ConfigWarning, match=r"template \(not one of raytune_ft's named templates"):
        cfg = load_config(SHIPPED)
    assert cfg.model.source == "builtin:smollm2-135m-instruct"
    assert (cfg.adapter.type, cfg.adapter.rank, cfg.adapter.target) == ("lora", 8, ["all"])
    assert cfg.data.dataset == ["identity", "alpaca_300"]
    assert (cfg.data.cutoff_len, cfg.data.max_samples, cfg.data.tokenize_concurrency) == (512, 1000, 1)
    assert (cfg.train.per_device_batch_size, cfg.train.gradient_accumulation_steps) == (4, 2)
    assert (cfg.train.learning_rate, cfg.train.num_epochs, cfg.train.warmup_ratio) == (1e-4, 3.0, 0.1)
    assert (cfg.train.storage_path, cfg.train.run_name) == ("saves/smollm2-135m/lora", "sft")
    assert cfg.scaling.num_workers == 2


def test_max_steps_minus_one_means_epochs(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model_name_or_path: x\nmax_steps: -1\nbf16: false\nmask_history: true\n"))
    assert cfg.train.max_steps is None and cfg.model.dtype == "float32"
    assert cfg.data.mask_history is True


def test_overrides_use_our_keys_after_translation(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model_name_or_path: x\nlearning_rate: 1e-4\n"), ["train.learning_rate=0.5"])
    assert cfg.train.learning_rate == 0.5


def test_keys_we_cannot_honour_are_listed_together(tmp_path: Path) -> None:
    text = "model_name_or_path: x\nwarmup_steps: 10\nadapter_name_or_path: a\ndo_eval: true\nlora_rnak: 8\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    for piece in ("warmup_steps: 10 asks for warmup in steps", "adapter_name_or_path: 'a' asks for starting",
                  "do_eval: True", "unknown LLaMA-Factory key 'lora_rnak'; did you mean 'lora_rank'"):  # fmt: skip
        assert piece in message


def test_switched_off_features_are_fine(tmp_path: Path) -> None:
    with pytest.warns(ConfigWarning, match="do_eval"):
        load_config(write(tmp_path, "model_name_or_path: x\ndo_eval: false\ndeepspeed: null\n"))


def test_data_engine_keys_map(tmp_path: Path) -> None:
    text = (
        "model_name_or_path: x\ndataset: a,b\ntemplate: chatml\nneat_packing: true\nval_size: 0.1\n"
        "mix_strategy: interleave_under\ninterleave_probs: 0.8,0.2\ntokenized_path: cache/tok\neval_steps: 50\n"
        "eval_strategy: steps\nstreaming: true\n"
    )
    with pytest.warns(ConfigWarning, match="eval_strategy"):
        cfg = load_config(write(tmp_path, text))
    assert (cfg.data.template, cfg.data.packing, cfg.data.val_size) == ("chatml", True, 0.1)
    assert (cfg.data.mix_strategy, cfg.data.interleave_probs) == ("interleave_under", [0.8, 0.2])
    assert (cfg.data.tokenized_path, cfg.train.eval_steps) == ("cache/tok", 50)


def test_named_templates_match_the_data_registry() -> None:
    from raytune_ft.config.llamafactory import NAMED_TEMPLATES
    from raytune_ft.data.templates import TEMPLATE_NAMES

    assert set(NAMED_TEMPLATES) == set(TEMPLATE_NAMES)


def test_unsupported_values_fail_in_our_terms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"method\.stage"):
        load_config(write(tmp_path, "model_name_or_path: x\nstage: ppo\n"))


def test_validate_explain_prints_the_translation(capsys: Any) -> None:
    assert main(["validate", str(SHIPPED), "--explain"]) == 0
    captured = capsys.readouterr()
    assert "lora_rank: 8 -> adapter.rank: 8" in captured.out
    assert "output_dir: 'saves/smollm2-135m/lora/sft' -> train.run_name: 'sft'" in captured.out


def test_adapter_family_keys_map(tmp_path: Path) -> None:
    text = (
        "model_name_or_path: x\nfinetuning_type: freeze\nfreeze_trainable_layers: -1\n"
        "freeze_trainable_modules: mlp,self_attn\nfreeze_extra_modules: embed_tokens\n"
        "use_dora: true\nuse_rslora: true\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert (cfg.adapter.type, cfg.adapter.freeze_trainable_layers) == ("freeze", -1)
    assert cfg.adapter.freeze_trainable_modules == ["mlp", "self_attn"] and cfg.adapter.freeze_extra_modules == [
        "embed_tokens"
    ]
    assert cfg.adapter.use_dora and cfg.adapter.use_rslora
    cfg = load_config(write(tmp_path, "model_name_or_path: x\npissa_init: true\npissa_iter: -1\n"))
    assert cfg.adapter.pissa_init and cfg.adapter.pissa_iter == -1


def test_disable_gradient_checkpointing_maps(tmp_path: Path) -> None:
    assert load_config(
        write(tmp_path, "model_name_or_path: x\ndisable_gradient_checkpointing: false\n")
    ).model.gradient_checkpointing
    assert not load_config(
        write(tmp_path, "model_name_or_path: x\ndisable_gradient_checkpointing: true\n")
    ).model.gradient_checkpointing
