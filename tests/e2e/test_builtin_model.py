"""The real builtin SmolLM2: converted from GGUF correctly, trained a few steps on Ray, and the
checkpoint chats through the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raytune_ft.cli import main

pytestmark = pytest.mark.e2e


def test_builtin_conversion_is_faithful(builtin_dir: Path, tokenizer: Any) -> None:
    from transformers import AutoConfig

    assert (builtin_dir / "model.safetensors").is_file()
    assert tokenizer.eos_token_id == 2 and tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    config = AutoConfig.from_pretrained(builtin_dir)
    assert (config.model_type, config.num_hidden_layers, config.tie_word_embeddings) == ("llama", 30, True)
    assert not hasattr(config, "quantization_config")


def test_train_builtin_then_chat(local_ray: None, builtin_dir: Path, tmp_path: Path, capsys: Any) -> None:
    code = main(
        [
            "train",
            str(Path(__file__).parents[2] / "configs" / "quickstart.yaml"),
            "scaling.num_workers=1",
            "train.max_steps=2",
            "train.per_device_batch_size=2",
            "data.cutoff_len=128",
            f"train.storage_path={tmp_path}",
            "train.run_name=e2e",
        ]
    )
    assert code == 0
    assert (tmp_path / "e2e" / "checkpoint-000002" / "adapter_model.safetensors").is_file()
    capsys.readouterr()
    assert main(["chat", "--adapter", str(tmp_path / "e2e"), "--prompt", "Who are you?", "--max-new-tokens", "12"]) == 0
    reply = capsys.readouterr().out.strip()
    assert len(reply.split()) >= 2, reply
