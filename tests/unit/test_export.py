"""``raytune-ft export``: merged exports behave like base + adapter, GGUF reads back, nothing is overwritten."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.cli import main
from raytune_ft.config import ExportConfig, load_config
from raytune_ft.export import MANIFEST, ExportError, export_checkpoint

PROMPT = "Who are you? Tell me"


def greedy(model: Any, tokenizer: Any, n: int = 12) -> list[int]:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [int(t) for t in out[0, ids.shape[1] :]]


def logits(model: Any, tokenizer: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(tokenizer(PROMPT, return_tensors="pt").input_ids).logits[0].float()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, adapter_checkpoint: Any) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny-lora"
    adapter_checkpoint(tiny_model_dir, run, 1, seed=1, source=str(tiny_model_dir))
    adapter_checkpoint(tiny_model_dir, run, 2, seed=2, source=str(tiny_model_dir))
    return run


@pytest.fixture(scope="module")
def base_plus_adapter(lora_run: Path) -> tuple[Any, Any]:
    from raytune_ft.models import load_for_inference

    return load_for_inference(None, lora_run)


def test_hf_export_equals_base_plus_adapter(lora_run: Path, base_plus_adapter: tuple[Any, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_checkpoint(lora_run, tmp_path / "merged", ExportConfig(max_shard_size="1MB"), log=lambda _: None)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert not list(out.glob("adapter_*")) and not (out / "optimizer.pt").exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["step"] == 2 and manifest["merged_adapter"] and manifest["checkpoint"].endswith("checkpoint-000002")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    model, adapter_tokenizer = base_plus_adapter
    assert tokenizer.chat_template == adapter_tokenizer.chat_template
    assert greedy(exported, tokenizer) == greedy(model, adapter_tokenizer)
    torch.testing.assert_close(logits(exported, tokenizer), logits(model, adapter_tokenizer), atol=1e-4, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(manifest["base"]).eval()
    assert not torch.allclose(
        logits(base, tokenizer), logits(exported, tokenizer), atol=1e-3
    )  # the merge did something


def test_dora_merges_too(tiny_model_dir: Path, adapter_checkpoint: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raytune_ft.models import load_for_inference

    run = tmp_path / "runs" / "dora"
    folder = adapter_checkpoint(tiny_model_dir, run, 1, seed=5, source=str(tiny_model_dir), dora=True)
    assert any("lora_magnitude_vector" in key for key in load_file(folder / "adapter_model.safetensors"))
    out = export_checkpoint(run, tmp_path / "merged", ExportConfig(), log=lambda _: None)
    model, tokenizer = load_for_inference(None, run)
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(
        logits(exported, AutoTokenizer.from_pretrained(out)), logits(model, tokenizer), atol=1e-4, rtol=1e-4
    )


def test_hf_export_casts_to_the_asked_dtype(lora_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = export_checkpoint(lora_run, tmp_path / "bf16", ExportConfig(dtype="bfloat16"), log=lambda _: None)
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


def test_full_weights_checkpoint_exports_as_is(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raytune_ft.config import dump_config

    checkpoint = tmp_path / "full" / "checkpoint-000003"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    cfg = load_config(None, [f"model.source={tiny_model_dir}", "adapter.type=full"])
    (checkpoint / "raytune_ft.yaml").write_text(dump_config(cfg))
    out = export_checkpoint(checkpoint.parent, tmp_path / "out", ExportConfig(), log=lambda _: None)
    assert json.loads((out / MANIFEST).read_text())["merged_adapter"] is False
    tokenizer = AutoTokenizer.from_pretrained(out)
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out), tokenizer), logits(model, tokenizer))


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_gguf_reads_back_in_transformers(
    lora_run: Path, base_plus_adapter: tuple[Any, Any], tmp_path: Path, gguf_type: str
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = ExportConfig(format="gguf", gguf_type=gguf_type)
    out = export_checkpoint(lora_run, tmp_path / gguf_type, cfg, log=lambda _: None)
    name = f"model-{gguf_type}.gguf"
    assert sorted(p.name for p in out.iterdir()) == sorted([name, MANIFEST])
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=name).eval()
    model, adapter_tokenizer = base_plus_adapter
    assert tokenizer(PROMPT).input_ids == adapter_tokenizer(PROMPT).input_ids
    assert tokenizer.eos_token_id == adapter_tokenizer.eos_token_id
    assert tokenizer.chat_template == adapter_tokenizer.chat_template
    tolerance = {"f16": 2e-2, "q8_0": 0.15}[gguf_type]
    torch.testing.assert_close(logits(loaded, tokenizer), logits(model, adapter_tokenizer), atol=tolerance, rtol=0)
    if gguf_type == "f16":
        assert greedy(loaded, tokenizer) == greedy(model, adapter_tokenizer)


def test_gguf_of_a_qwen2_model_keeps_its_biases(tmp_path: Path, tokenizer: Any, adapter_checkpoint: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen2", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    base = tmp_path / "qwen2"
    original = AutoModelForCausalLM.from_config(config)
    for name, weight in original.named_parameters():
        if name.endswith("bias"):
            weight.data.normal_(0, 0.5)  # non-zero, so a dropped bias would show
    original.save_pretrained(base)
    tokenizer.save_pretrained(base)
    run = tmp_path / "runs" / "qwen"
    adapter_checkpoint(base, run, 1, seed=3, source=str(base))
    out = export_checkpoint(run, tmp_path / "gguf", ExportConfig(format="gguf"), log=lambda _: None)
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file="model-f16.gguf").eval()
    merged = export_checkpoint(run, tmp_path / "hf", ExportConfig(), log=lambda _: None)
    reference = AutoModelForCausalLM.from_pretrained(merged).eval()
    torch.testing.assert_close(logits(loaded, tokenizer), logits(reference, tokenizer), atol=2e-2, rtol=0)


def test_gguf_refuses_an_architecture_it_cannot_write(tmp_path: Path, tokenizer: Any, adapter_checkpoint: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "gemma", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    base = tmp_path / "gemma"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run = tmp_path / "runs" / "gemma"
    adapter_checkpoint(base, run, 1, seed=1, source=str(base))
    with pytest.raises(ExportError, match=r"not 'gemma'.*--format hf.*convert_hf_to_gguf"):
        export_checkpoint(run, tmp_path / "out", ExportConfig(format="gguf"), log=lambda _: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_cli_refuses_a_non_empty_destination_and_overwrites_only_when_asked(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(lora_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not empty" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    assert main(["export", "--checkpoint", str(lora_run), "--out", str(out), "--overwrite"]) == 0
    assert "exported" in capsys.readouterr().out
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging or old folder left behind


def test_cli_export_settings_from_flags_and_overrides(lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8"
    assert (
        main(["export", "export.gguf_type=q8_0", "--checkpoint", str(lora_run), "--out", str(out), "--format", "gguf"])
        == 0
    )
    assert (out / "model-q8_0.gguf").is_file()


def test_cli_needs_a_destination_and_refuses_one_inside_the_run(
    lora_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--checkpoint", str(lora_run)]) == 2
    assert "--out DIR" in capsys.readouterr().err
    inside = lora_run / "checkpoint-000002" / "export"
    assert main(["export", "--checkpoint", str(lora_run), "--out", str(inside)]) == 2
    assert "overlaps the checkpoint" in capsys.readouterr().err and not inside.exists()


def test_export_config_is_validated_and_llamafactory_keys_translate(tmp_path: Path) -> None:
    from raytune_ft.config import ConfigError

    with pytest.raises(ConfigError, match="max_shard_size"):
        load_config(None, ["export.max_shard_size=lots"])
    flat = tmp_path / "lf.yaml"
    flat.write_text("model_name_or_path: builtin:smollm2-135m-instruct\nexport_dir: out/merged\nexport_size: 2\n"
                    "export_device: cpu\nexport_legacy_format: false\n")  # fmt: skip
    cfg = load_config(flat)
    assert cfg.export.out_dir == "out/merged" and cfg.export.max_shard_size == "2GB"
